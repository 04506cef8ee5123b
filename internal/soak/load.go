package soak

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
)

// soakDevice is a device the soak provisions and drives.
type soakDevice struct {
	id      string
	key     string // base64 primary key
	next    int64  // next D2C message number (only its sender uses it)
	c2dNext int64  // next C2D message number (only the C2D sender uses it)
}

// load is the traffic of one cycle: a sender per device, a twin writer
// and a registry writer. It runs until stop.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (ld *load) stop() {
	ld.cancel()
	ld.wg.Wait()
}

// startLoad starts the cycle's traffic against the hub at spec.
func (r *run) startLoad(spec ChildSpec, rc *restClient) *load {
	ctx, cancel := context.WithCancel(context.Background())
	ld := &load{cancel: cancel}
	for _, d := range r.devices {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			r.sendD2C(ctx, spec, d)
		}()
	}
	if r.c2dOn {
		ld.wg.Add(2 + len(r.devices))
		go func() {
			defer ld.wg.Done()
			r.sendC2D(ctx, spec)
		}()
		go func() {
			defer ld.wg.Done()
			r.receiveFeedback(ctx, spec)
		}()
		for _, d := range r.devices {
			go func() {
				defer ld.wg.Done()
				r.receiveC2D(ctx, spec, d)
			}()
		}
	}
	ld.wg.Add(2)
	go func() {
		defer ld.wg.Done()
		r.writeTwins(ctx, rc)
	}()
	go func() {
		defer ld.wg.Done()
		r.writeRegistry(ctx, rc)
	}()
	return ld
}

// sendD2C keeps a device connected and sending, with up to InFlight
// messages awaiting their outcome, reconnecting after every failure
// until ctx ends. Outcomes are recorded in the ledger as they arrive.
func (r *run) sendD2C(ctx context.Context, spec ChildSpec, d *soakDevice) {
	key, _ := base64.StdEncoding.DecodeString(d.key)
	body := make([]byte, r.cfg.MessageSize)
	for ctx.Err() == nil {
		err := r.deviceSession(ctx, spec, d, key, body)
		if ctx.Err() != nil {
			return
		}
		r.reconnects.Add(1)
		if err != nil {
			r.lastErr.Store(fmt.Sprintf("device %s: %v", d.id, err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *run) deviceSession(ctx context.Context, spec ChildSpec, d *soakDevice, key, body []byte) error {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	token := sas.Sign(HostName+"/devices/"+d.id, key, "", time.Now().Add(time.Hour))
	conn, err := goamqp.Dial(dctx, "amqp://"+spec.AMQPAddr, &goamqp.ConnOptions{
		SASLType: goamqp.SASLTypePlain(d.id+"@sas."+hubName, token),
		HostName: HostName,
	})
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close()
	dctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	sess, err := conn.NewSession(dctx, nil)
	if err == nil {
		var snd *goamqp.Sender
		snd, err = sess.NewSender(dctx, "/devices/"+d.id+"/messages/events", nil)
		cancel()
		if err == nil {
			defer closeWhenDone(ctx, conn, snd)()
			return r.pump(ctx, d, snd, body)
		}
	}
	cancel()
	return err
}

// pump sends until the link fails or ctx ends.
func (r *run) pump(ctx context.Context, d *soakDevice, snd *goamqp.Sender, body []byte) error {
	sem := make(chan struct{}, r.cfg.InFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		id := msgID(d.id, d.next)
		d.next++
		r.ledger.markSent(id)
		m := &goamqp.Message{
			Properties: &goamqp.MessageProperties{MessageID: id},
			Data:       [][]byte{body},
		}
		receipt, err := snd.SendWithReceipt(ctx, m, nil)
		if err != nil {
			<-sem
			return err // the message stays "sent": its fate is unknown
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// A receipt ends when the outcome arrives, the link dies or
			// the cycle ends.
			st, err := receipt.Wait(ctx)
			if err != nil {
				return
			}
			switch st.(type) {
			case *goamqp.StateAccepted:
				r.ledger.mark(id, stAcked)
			case *goamqp.StateRejected:
				r.ledger.mark(id, stRejected)
			}
		}()
	}
}

// writeTwins patches each device's twin in turn (tags and desired
// properties), recording what was attempted and what acknowledged.
func (r *run) writeTwins(ctx context.Context, rc *restClient) {
	for i := 0; ctx.Err() == nil; i++ {
		d := r.devices[i%len(r.devices)]
		tl := r.twins
		tl.mu.Lock()
		n := tl.attempted[d.id] + 1
		tl.attempted[d.id] = n
		tl.updates++
		tl.mu.Unlock()
		patch := map[string]any{
			"tags":       map[string]any{"soak": map[string]any{"n": n}},
			"properties": map[string]any{"desired": map[string]any{"soakN": n}},
		}
		var tw twin
		err := rc.do(ctx, http.MethodPatch, "/twins/"+d.id, patch, &tw)
		if err == nil {
			tl.mu.Lock()
			tl.acked[d.id] = max(tl.acked[d.id], n)
			tl.version[d.id] = max(tl.version[d.id], tw.Version)
			tl.ackedN++
			tl.mu.Unlock()
		} else if ctx.Err() == nil {
			sleepCtx(ctx, 50*time.Millisecond) // the hub is restarting
		}
		sleepCtx(ctx, r.cfg.TwinInterval)
	}
}

// writeRegistry creates a device now and then, recording the
// acknowledged creations.
func (r *run) writeRegistry(ctx context.Context, rc *restClient) {
	for ctx.Err() == nil {
		id := fmt.Sprintf("soak-reg-%d", r.regNext.Add(1))
		var d device
		err := rc.do(ctx, http.MethodPut, "/devices/"+id, map[string]any{"deviceId": id}, &d)
		var se *statusError
		switch {
		case err == nil:
			r.regMu.Lock()
			r.regCreated[id] = d.GenerationID
			r.regMu.Unlock()
		case errors.As(err, &se):
			r.problems.addf("registry: creating %s: %v", id, err)
		}
		sleepCtx(ctx, r.cfg.RegistryInterval)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// closeWhenDone closes snd once ctx ends or conn dies, and returns a
// function that stops watching. go-amqp v1.7.0 can leave a Send blocked
// for ever when the connection dies in the middle of it (after a failed
// write it waits to roll back credit with a mux that has exited, watching
// only for the link's Close); closing the link releases it.
func closeWhenDone(ctx context.Context, conn *goamqp.Conn, snd *goamqp.Sender) (stop func()) {
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-conn.Done():
		case <-stopped:
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		snd.Close(cctx)
	}()
	return func() { close(stopped) }
}
