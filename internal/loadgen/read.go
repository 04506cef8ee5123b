package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/telemetry"
)

// ReadConfig configures the catch-up read scenario.
type ReadConfig struct {
	// Messages is how many messages to fill the partition with and read
	// back. Default 1,000,000.
	Messages int
	// MessageSize is the payload size of the fill. Default 256.
	MessageSize int
	// Partition is the partition filled and read. Default 0.
	Partition int
	// Credit is the reader's link credit. Default 5000.
	Credit int
	// Fill configures the sending side (connections, in-flight, client);
	// its Duration, Rate and Messages are ignored.
	Fill D2CConfig
	// Client reads with ClientGoAMQP or ClientRaw; default Fill.Client.
	Client string
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
}

// RunRead fills one partition with Messages messages from devices that
// hash to it, then times a consumer reading them from the
// Event-Hub-compatible endpoint, as one catching up after downtime does.
// The report's MsgsPerSec and MBPerSec are the read rate; Sent and
// Accepted are the fill's.
func RunRead(ctx context.Context, t *Target, cfg ReadConfig) (*Report, error) {
	if t.Hub == nil {
		return nil, errors.New("loadgen: the read scenario needs an IoT hub target")
	}
	if cfg.Messages == 0 {
		cfg.Messages = 1000000
	}
	if cfg.Credit == 0 {
		cfg.Credit = 5000
	}
	if cfg.Client == "" {
		cfg.Client = cfg.Fill.Client
	}
	if cfg.Messages < 0 || cfg.Credit < 0 || cfg.Partition < 0 {
		return nil, errors.New("loadgen: messages, credit and partition must not be negative")
	}
	fill := cfg.Fill
	fill.Rate, fill.Duration, fill.Messages = 0, 0, int64(cfg.Messages)
	fill.MessageSize = cfg.MessageSize
	fill.Progress = cfg.Progress
	if err := fill.defaults(); err != nil {
		return nil, err
	}
	cfg.MessageSize = fill.MessageSize

	// Where the partition ends now: the read starts after it.
	login, err := t.Hub.ServiceLogin()
	if err != nil {
		return nil, err
	}
	conn, err := t.dialAMQP(ctx, login, true)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("loadgen: session: %w", err)
	}
	m, err := newEHManagement(ctx, sess)
	if err != nil {
		return nil, err
	}
	entity := t.Hub.entity()
	pids, err := m.partitionIDs(ctx, entity)
	if err != nil {
		return nil, err
	}
	if cfg.Partition >= len(pids) {
		return nil, fmt.Errorf("loadgen: partition %d does not exist (the hub has %d)", cfg.Partition, len(pids))
	}
	pid := pids[cfg.Partition]
	before, err := m.lastSequence(ctx, entity, pid)
	if err != nil {
		return nil, err
	}

	// Fill from devices whose telemetry lands in the partition.
	var idx []int
	for i := 0; len(idx) < fill.Connections; i++ {
		if telemetry.Partition(t.Hub.DeviceID(i), len(pids)) == cfg.Partition {
			idx = append(idx, i)
		}
	}
	ids, err := t.Hub.devicesAt(ctx, idx)
	if err != nil {
		return nil, err
	}
	run := newSendRun(t, fill, ids)
	if err := run.open(ctx); err != nil {
		run.closeAll()
		return nil, err
	}
	frep := run.run(ctx, "read: fill", func(*sendWorker, int64, time.Time, []byte) {})
	if frep.Accepted != int64(cfg.Messages) {
		return frep, fmt.Errorf("loadgen: the fill got %d of %d messages accepted: %v", frep.Accepted, cfg.Messages, frep.Errors)
	}
	after, err := m.lastSequence(ctx, entity, pid)
	if err != nil {
		return nil, err
	}
	m.close(ctx)
	want := after - before
	if want < int64(cfg.Messages) {
		return nil, fmt.Errorf("loadgen: partition %s grew by %d events, %d were sent", pid, want, cfg.Messages)
	}

	addr := partitionAddress(entity, "$Default", pid)
	selector := fmt.Sprintf("amqp.annotation.x-opt-sequence-number > '%d'", before)
	var got atomic.Int64
	stop := startProgress(cfg.Progress, time.Second, func(el time.Duration) string {
		return fmt.Sprintf("read %5.1fs  %d of %d", el.Seconds(), got.Load(), want)
	})
	var el time.Duration
	var lastSeq int64
	cpu := startCPU(t.HubPID)
	switch cfg.Client {
	case ClientRaw:
		el, lastSeq, err = readRaw(ctx, t, login, addr, selector, uint32(cfg.Credit), want, &got)
	default:
		el, lastSeq, err = readGoAMQP(ctx, sess, addr, selector, int32(cfg.Credit), want, &got)
	}
	stop()
	if err != nil {
		return nil, err
	}
	var cpuRep Report
	cpu.stop(&cpuRep)
	if lastSeq != after {
		return nil, fmt.Errorf("loadgen: the read ended at sequence number %d, the partition's last is %d", lastSeq, after)
	}
	n := got.Load()
	return &Report{
		Scenario:     "read",
		Target:       t.String(),
		Client:       clientName(cfg.Client),
		Started:      frep.Started,
		Connections:  fill.Connections,
		MessageSize:  cfg.MessageSize,
		TLS:          t.TLS != nil,
		Seconds:      el.Seconds(),
		Sent:         frep.Sent,
		Accepted:     frep.Accepted,
		Received:     n,
		MsgsPerSec:   float64(n) / el.Seconds(),
		MBPerSec:     float64(n) * float64(cfg.MessageSize) / el.Seconds() / 1e6,
		FillPerSec:   frep.MsgsPerSec,
		Errors:       frep.Errors,
		HubCores:     cpuRep.HubCores,
		LoadgenCores: cpuRep.LoadgenCores,
	}, nil
}

// readGoAMQP reads want events with a go-amqp receiver and returns how
// long it took and the last event's sequence number.
func readGoAMQP(ctx context.Context, sess *goamqp.Session, addr, selector string, credit int32, want int64, got *atomic.Int64) (time.Duration, int64, error) {
	start := time.Now()
	r, err := sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{
		Credit:  credit,
		Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter(selector)},
	})
	if err != nil {
		return 0, 0, fmt.Errorf("loadgen: attach reader %s: %w", addr, err)
	}
	defer r.Close(context.Background())
	var last int64
	for n := int64(0); n < want; n++ {
		m, err := r.Receive(ctx, nil)
		if err != nil {
			return 0, 0, fmt.Errorf("loadgen: reading event %d of %d: %w", n, want, err)
		}
		got.Add(1)
		if n == want-1 {
			last, _ = m.Annotations["x-opt-sequence-number"].(int64)
		}
	}
	return time.Since(start), last, nil
}

// readRaw is readGoAMQP with the raw client.
func readRaw(ctx context.Context, t *Target, login Login, addr, selector string, credit uint32, want int64, got *atomic.Int64) (time.Duration, int64, error) {
	c, err := rawDial(ctx, t, login, 256<<10)
	if err != nil {
		return 0, 0, err
	}
	defer c.close()
	done := make(chan struct{})
	var last int64
	var lastErr error
	var n int64
	start := time.Now()
	_, err = c.attachReceiver(addr, selectorFilter(selector), credit, func(tr *frames.Transfer) {
		if !tr.HasDeliveryID {
			return // a continuation frame
		}
		n++
		got.Store(n)
		if n == want {
			last, lastErr = sequenceOf(tr.Payload)
			close(done)
		}
	})
	if err != nil {
		return 0, 0, err
	}
	c.start()
	select {
	case <-done:
	case <-c.readerDone:
		return 0, 0, fmt.Errorf("loadgen: the reader's connection ended after %d of %d events: %w", got.Load(), want, c.err)
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
	return time.Since(start), last, lastErr
}

// sequenceOf reads x-opt-sequence-number from an encoded event.
func sequenceOf(msg []byte) (int64, error) {
	var m frames.Message
	if err := m.UnmarshalAMQP(msg); err != nil {
		return 0, fmt.Errorf("loadgen: decoding the last event: %w", err)
	}
	switch v := m.Annotations[encoding.Symbol("x-opt-sequence-number")].(type) {
	case int64:
		return v, nil
	case string:
		return strconv.ParseInt(v, 10, 64)
	}
	return 0, errors.New("loadgen: the last event has no x-opt-sequence-number")
}
