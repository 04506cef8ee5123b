package soak

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
)

// C2D under the soak: the service sends to every device in turn (with
// iothub-ack full) and records the outcome; each device receives and
// completes what it gets; the service receives feedback. In the end every
// message the hub accepted must have reached its device at least once, or
// be accounted for by negative feedback (expired, rejected, delivery count
// exceeded, purged). Deliveries of the same message more than once are
// counted (locks of messages delivered but not yet completed at a kill
// expire and the message comes again: at-least-once), never a delivery of
// a message that was refused or never sent.

// c2dPrefix marks the soak's C2D message ids: "c2d:<device>#<n>".
const c2dPrefix = "c2d:"

// C2DReport holds the cloud-to-device figures.
type C2DReport struct {
	Sent       int64 // service sends
	Acked      int64 // accepted by the hub
	Rejected   int64 // refused (a full queue)
	Delivered  int64 // distinct acknowledged messages that reached their device
	Deliveries int64 // deliveries in total
	// Redelivered counts extra deliveries of a message (at-least-once).
	Redelivered int64
	// Feedback counts feedback records by status code.
	Feedback map[string]int64
	// Lost: accepted, never delivered, no negative feedback.
	Lost int64
	// Phantom: delivered (or fed back) but refused or never sent, or
	// delivered to another device.
	Phantom int64
}

type c2dLedger struct {
	mu        sync.Mutex
	state     map[string]msgState
	delivered map[string]int
	feedback  map[string]string // last status code per message
	counts    map[string]int64  // feedback records by status code
	sent      int64
	acked     int64
	rejected  int64
	phantom   int64
}

func newC2DLedger() *c2dLedger {
	return &c2dLedger{state: map[string]msgState{}, delivered: map[string]int{}, feedback: map[string]string{}, counts: map[string]int64{}}
}

// accountedFor reports whether every accepted message reached its device
// or has negative feedback.
func (l *c2dLedger) accountedFor() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, st := range l.state {
		if st == stAcked && l.delivered[id] == 0 && !negativeFeedback(l.feedback[id]) {
			return false
		}
	}
	return true
}

func negativeFeedback(code string) bool {
	switch code {
	case "Expired", "DeliveryCountExceeded", "Rejected", "Purged":
		return true
	}
	return false
}

// verifyC2D summarises the ledger at the end of the soak.
func verifyC2D(l *c2dLedger, p *problems) C2DReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := C2DReport{Sent: l.sent, Acked: l.acked, Rejected: l.rejected, Phantom: l.phantom, Feedback: map[string]int64{}}
	for k, v := range l.counts {
		r.Feedback[k] = v
	}
	var lost []string
	for id, n := range l.delivered {
		r.Deliveries += int64(n)
		if n > 1 {
			r.Redelivered += int64(n - 1)
		}
		if st, ok := l.state[id]; !ok || st == stRejected {
			r.Phantom++
			p.addf("C2D message %s was delivered but never accepted by the hub", id)
		} else {
			r.Delivered++
		}
	}
	for id, st := range l.state {
		if st == stAcked && l.delivered[id] == 0 && !negativeFeedback(l.feedback[id]) {
			r.Lost++
			lost = append(lost, id)
		}
	}
	sort.Strings(lost)
	for _, id := range lost {
		p.addf("C2D message %s was accepted but never delivered and has no negative feedback (feedback %q)", id, l.feedback[id])
	}
	return r
}

// sendC2D is the service: it sends to the devices in turn, one message at
// a time awaiting its outcome, reconnecting after failures.
func (r *run) sendC2D(ctx context.Context, spec ChildSpec) {
	for i := 0; ctx.Err() == nil; {
		c, err := ownerConn(ctx, spec)
		if err != nil {
			sleepCtx(ctx, 50*time.Millisecond)
			continue
		}
		err = func() error {
			defer c.Close()
			s, err := c.NewSession(ctx, nil)
			if err != nil {
				return err
			}
			snd, err := s.NewSender(ctx, "/messages/devicebound", nil)
			if err != nil {
				return err
			}
			defer closeWhenDone(ctx, c, snd)()
			for ctx.Err() == nil {
				d := r.devices[i%len(r.devices)]
				i++
				n := d.c2dNext
				d.c2dNext++
				id := c2dPrefix + msgID(d.id, n)
				to := "/devices/" + d.id + "/messages/devicebound"
				m := &goamqp.Message{
					Properties:            &goamqp.MessageProperties{MessageID: id, To: &to},
					ApplicationProperties: map[string]any{"iothub-ack": "full"},
					Data:                  [][]byte{[]byte("soak")},
				}
				l := r.c2d
				l.mu.Lock()
				l.state[id] = stSent
				l.sent++
				l.mu.Unlock()
				receipt, err := snd.SendWithReceipt(ctx, m, nil)
				if err != nil {
					return err
				}
				st, err := receipt.Wait(ctx)
				if err != nil {
					return err
				}
				l.mu.Lock()
				switch st.(type) {
				case *goamqp.StateAccepted:
					l.state[id] = stAcked
					l.acked++
				case *goamqp.StateRejected:
					l.state[id] = stRejected
					l.rejected++
				}
				l.mu.Unlock()
				if _, full := st.(*goamqp.StateRejected); full {
					sleepCtx(ctx, 20*time.Millisecond) // the device's queue is full
				} else {
					sleepCtx(ctx, r.cfg.C2DInterval)
				}
			}
			return nil
		}()
		if err != nil && ctx.Err() == nil {
			sleepCtx(ctx, 50*time.Millisecond)
		}
	}
}

// receiveC2D is a device completing whatever it receives.
func (r *run) receiveC2D(ctx context.Context, spec ChildSpec, d *soakDevice) {
	key, _ := base64.StdEncoding.DecodeString(d.key)
	for ctx.Err() == nil {
		err := func() error {
			token := sas.Sign(HostName+"/devices/"+d.id, key, "", time.Now().Add(time.Hour))
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			c, err := goamqp.Dial(dctx, "amqp://"+spec.AMQPAddr, &goamqp.ConnOptions{
				SASLType: goamqp.SASLTypePlain(d.id+"@sas."+hubName, token),
				HostName: HostName,
			})
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.NewSession(dctx, nil)
			if err != nil {
				return err
			}
			rcv, err := s.NewReceiver(dctx, "/devices/"+d.id+"/messages/devicebound", &goamqp.ReceiverOptions{Credit: 20})
			if err != nil {
				return err
			}
			for {
				m, err := rcv.Receive(ctx, nil)
				if err != nil {
					return err
				}
				id := ""
				if m.Properties != nil {
					id, _ = m.Properties.MessageID.(string)
				}
				l := r.c2d
				l.mu.Lock()
				l.delivered[id]++
				if dev, _, ok := parseID(strings.TrimPrefix(id, c2dPrefix)); !ok || dev != d.id {
					l.phantom++
					r.problems.addf("C2D message %q delivered to device %s", id, d.id)
				}
				l.mu.Unlock()
				if err := rcv.AcceptMessage(ctx, m); err != nil {
					return err
				}
			}
		}()
		if err != nil && ctx.Err() == nil {
			sleepCtx(ctx, 50*time.Millisecond)
		}
	}
}

// feedbackRecord is the part of a feedback record the soak reads.
type feedbackRecord struct {
	OriginalMessageID string `json:"originalMessageId"`
	StatusCode        string `json:"statusCode"`
	DeviceID          string `json:"deviceId"`
}

// receiveFeedback is the service reading feedback.
func (r *run) receiveFeedback(ctx context.Context, spec ChildSpec) {
	for ctx.Err() == nil {
		err := func() error {
			c, err := ownerConn(ctx, spec)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.NewSession(ctx, nil)
			if err != nil {
				return err
			}
			rcv, err := s.NewReceiver(ctx, "/messages/serviceBound/feedback", &goamqp.ReceiverOptions{Credit: 10})
			if err != nil {
				return err
			}
			for {
				m, err := rcv.Receive(ctx, nil)
				if err != nil {
					return err
				}
				var recs []feedbackRecord
				if err := json.Unmarshal(m.GetData(), &recs); err != nil {
					r.problems.addf("feedback batch does not decode: %v", err)
				}
				l := r.c2d
				l.mu.Lock()
				for _, fr := range recs {
					l.counts[fr.StatusCode]++
					st, sent := l.state[fr.OriginalMessageID]
					if !sent || st == stRejected {
						l.phantom++
						r.problems.addf("feedback %s for C2D message %q that was never accepted", fr.StatusCode, fr.OriginalMessageID)
					}
					l.feedback[fr.OriginalMessageID] = fr.StatusCode
				}
				l.mu.Unlock()
				if err := rcv.AcceptMessage(ctx, m); err != nil {
					return err
				}
			}
		}()
		if err != nil && ctx.Err() == nil {
			sleepCtx(ctx, 50*time.Millisecond)
		}
	}
}

// drainC2D runs the devices and the feedback reader on the final hub until
// every accepted message is accounted for, or timeout.
func (r *run) drainC2D(ctx context.Context, spec ChildSpec, timeout time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, d := range r.devices {
		wg.Add(1)
		go func() { defer wg.Done(); r.receiveC2D(ctx, spec, d) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.receiveFeedback(ctx, spec) }()
	deadline := time.Now().Add(timeout)
	for !r.c2d.accountedFor() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not every accepted C2D message was delivered within %v", timeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return nil
}
