package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// D2CConfig configures the device-to-cloud scenario.
type D2CConfig struct {
	// Connections is the number of device connections (one device, one
	// link each). Default 4.
	Connections int
	// MessageSize is the payload size in bytes. Default 256.
	MessageSize int
	// Rate is the total offered rate in messages/s, spread evenly over
	// the connections; 0 sends as fast as acknowledgements allow, with
	// InFlight unacknowledged messages per connection.
	Rate float64
	// InFlight bounds unacknowledged messages per connection. Default 256.
	InFlight int
	// Duration is how long messages are offered. Default 10 s, unless
	// Messages is set.
	Duration time.Duration
	// Messages, when positive, stops the run after this many messages in
	// total (and before Duration, if that is set too).
	Messages int64
	// Drain bounds the wait for outstanding acknowledgements after
	// Duration; what is still unacknowledged then counts as failed.
	// Default 30 s.
	Drain time.Duration
	// NonDurable sends messages without the durable header flag. By
	// default messages are durable, so a broker must store them before
	// acknowledging (amqphub always does).
	NonDurable bool
	// Client is ClientGoAMQP (default) or ClientRaw.
	Client string
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
}

func (c *D2CConfig) defaults() error {
	if c.Connections == 0 {
		c.Connections = 4
	}
	if c.MessageSize == 0 {
		c.MessageSize = 256
	}
	if c.InFlight == 0 {
		c.InFlight = 256
	}
	if c.Duration == 0 && c.Messages == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 30 * time.Second
	}
	switch {
	case c.Connections < 0:
		return fmt.Errorf("loadgen: connections must be positive, got %d", c.Connections)
	case c.MessageSize < 16 || c.MessageSize > 1<<20:
		return fmt.Errorf("loadgen: message size must be 16 bytes to 1 MiB, got %d", c.MessageSize)
	case c.Rate < 0:
		return fmt.Errorf("loadgen: rate must not be negative, got %g", c.Rate)
	case c.InFlight < 0:
		return fmt.Errorf("loadgen: in-flight must be positive, got %d", c.InFlight)
	case c.Duration < 0 || c.Drain < 0 || c.Messages < 0:
		return errors.New("loadgen: durations must not be negative")
	}
	return nil
}

// RunD2C runs the device-to-cloud scenario: Connections devices send
// MessageSize-byte messages for Duration and every acknowledgement is
// timed. The report's Latency is the acknowledgement latency; at a fixed
// Rate it is measured from each message's intended send time, so queueing
// in the generator or the server is not hidden (no coordinated omission).
func RunD2C(ctx context.Context, t *Target, cfg D2CConfig) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ids, err := t.identities(ctx, cfg.Connections)
	if err != nil {
		return nil, err
	}
	run := newSendRun(t, cfg, ids)
	if err := run.open(ctx); err != nil {
		run.closeAll()
		return nil, err
	}
	rep := run.run(ctx, "d2c", func(w *sendWorker, seq int64, t0 time.Time, body []byte) {})
	return rep, nil
}

// sendRun is a set of device connections offering load; d2c and e2e share it.
type sendRun struct {
	t       *Target
	cfg     D2CConfig
	ids     []Identity
	workers []*sendWorker
	recs    []*recorder
	errs    errorSet

	sent, accepted, rejected, failed atomic.Int64
	claimed                          atomic.Int64 // messages taken towards cfg.Messages
	lastAck                          atomic.Int64 // unix nanos of the latest outcome
}

// sendWorker is one device connection and its in-flight window.
type sendWorker struct {
	run    *sendRun
	idx    int
	s      msgSender
	rec    *recorder
	window chan struct{}
	// outstanding counts sent messages without an outcome yet.
	outstanding atomic.Int64
	idle        chan struct{} // signalled when outstanding drops to 0
}

// recordersFor shares a bounded number of histograms between workers:
// each HDR histogram is ~150 KiB, too much to have per connection when
// there are thousands.
func recordersFor(n int) []*recorder {
	rs := make([]*recorder, min(n, 64))
	for i := range rs {
		rs[i] = newRecorder()
	}
	return rs
}

func newSendRun(t *Target, cfg D2CConfig, ids []Identity) *sendRun {
	r := &sendRun{t: t, cfg: cfg, ids: ids, recs: recordersFor(len(ids))}
	return r
}

// open connects every device, a few at a time.
func (r *sendRun) open(ctx context.Context) error {
	r.workers = make([]*sendWorker, len(r.ids))
	err := parallel(ctx, len(r.ids), 32, func(ctx context.Context, i int) error {
		w := &sendWorker{
			run:    r,
			idx:    i,
			rec:    r.recs[i%len(r.recs)],
			window: make(chan struct{}, r.cfg.InFlight),
			idle:   make(chan struct{}, 1),
		}
		s, err := openSender(ctx, r.cfg.Client, senderOptions{
			target:   r.t,
			id:       r.ids[i],
			inFlight: r.cfg.InFlight,
			durable:  !r.cfg.NonDurable,
			onAck:    w.onAck,
		})
		if err != nil {
			return err
		}
		w.s = s
		r.workers[i] = w
		return nil
	})
	return err
}

func (r *sendRun) closeAll() {
	var wg sync.WaitGroup
	for _, w := range r.workers {
		if w != nil && w.s != nil {
			wg.Add(1)
			go func() { defer wg.Done(); w.s.close() }()
		}
	}
	wg.Wait()
}

func (w *sendWorker) onAck(t0 time.Time, err error) {
	now := time.Now()
	r := w.run
	if err == nil {
		r.accepted.Add(1)
		w.rec.record(now.Sub(t0))
	} else {
		var rej *errRejected
		if errors.As(err, &rej) {
			r.rejected.Add(1)
		} else {
			r.failed.Add(1)
		}
		r.errs.add(err)
	}
	// Racy max is fine: the last acknowledgement of a run is late by far.
	if n := now.UnixNano(); n > r.lastAck.Load() {
		r.lastAck.Store(n)
	}
	<-w.window
	if w.outstanding.Add(-1) == 0 {
		select {
		case w.idle <- struct{}{}:
		default:
		}
	}
}

// bodyFunc fills a message body before it is sent (e2e stamps it).
type bodyFunc func(w *sendWorker, seq int64, t0 time.Time, body []byte)

// run offers load for the configured duration, waits for the outcomes
// and reports.
func (r *sendRun) run(ctx context.Context, scenario string, fill bodyFunc) *Report {
	cfg := r.cfg
	n := len(r.workers)
	start := time.Now()
	end := start.Add(cfg.Duration)
	if cfg.Duration == 0 {
		end = start.Add(1000 * time.Hour) // Messages ends the run
	}
	var lastSent, lastAcc int64
	lastT := time.Duration(0)
	stopProgress := startProgress(cfg.Progress, time.Second, func(el time.Duration) string {
		s, a := r.sent.Load(), r.accepted.Load()
		rate := float64(a-lastAcc) / (el - lastT).Seconds()
		lastSent, lastAcc, lastT = s, a, el
		line := fmt.Sprintf("%s %5.1fs  sent %d  accepted %d  %.0f msgs/s", scenario, el.Seconds(), s, a, rate)
		if l := summarize(merged(r.recs)); l != nil {
			line += fmt.Sprintf("  p50 %s  p99 %s", fmtMs(l.P50Ms), fmtMs(l.P99Ms))
		}
		return line
	})
	_ = lastSent
	cpu := startCPU(r.t.HubPID)
	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.offer(ctx, start, end, n, fill)
		}()
	}
	wg.Wait()
	sendEnd := time.Now()
	// Wait for the outstanding outcomes.
	drain := time.NewTimer(cfg.Drain)
	defer drain.Stop()
	for _, w := range r.workers {
		for w.outstanding.Load() > 0 {
			select {
			case <-w.idle:
			case <-drain.C:
				goto drained
			case <-ctx.Done():
				goto drained
			}
		}
	}
drained:
	stopProgress()
	var cpuRep Report
	cpu.stop(&cpuRep)
	r.closeAll()
	last := time.Unix(0, r.lastAck.Load())
	if last.Before(sendEnd) {
		last = sendEnd
	}
	el := last.Sub(start).Seconds()
	acc := r.accepted.Load()
	rep := &Report{
		Scenario:     scenario,
		Target:       r.t.String(),
		Client:       clientName(cfg.Client),
		Started:      start,
		Connections:  n,
		MessageSize:  cfg.MessageSize,
		Rate:         cfg.Rate,
		InFlight:     cfg.InFlight,
		TLS:          r.t.TLS != nil,
		Seconds:      el,
		Sent:         r.sent.Load(),
		Accepted:     acc,
		Rejected:     r.rejected.Load(),
		Failed:       r.failed.Load(),
		MsgsPerSec:   float64(acc) / el,
		MBPerSec:     float64(acc) * float64(cfg.MessageSize) / el / 1e6,
		Latency:      summarize(merged(r.recs)),
		Errors:       r.errs.all(),
		HubCores:     cpuRep.HubCores,
		LoadgenCores: cpuRep.LoadgenCores,
	}
	return rep
}

func clientName(c string) string {
	if c == "" {
		return ClientGoAMQP
	}
	return c
}

// offer sends until end: at the worker's share of the fixed rate, or as
// fast as its in-flight window allows.
func (w *sendWorker) offer(ctx context.Context, start, end time.Time, workers int, fill bodyFunc) {
	r := w.run
	cfg := r.cfg
	body := make([]byte, cfg.MessageSize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	// At a fixed rate message k of worker idx is due at
	// start + (k*workers+idx)/rate: the workers interleave evenly.
	var interval float64
	var timer *time.Timer
	if cfg.Rate > 0 {
		interval = float64(time.Second) / cfg.Rate
		timer = time.NewTimer(time.Hour)
		defer timer.Stop()
	}
	for k := int64(0); ctx.Err() == nil; k++ {
		var t0 time.Time
		if interval > 0 {
			t0 = start.Add(time.Duration(float64(k*int64(workers)+int64(w.idx)) * interval))
			if !t0.Before(end) {
				return
			}
			if d := time.Until(t0); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-ctx.Done():
					return
				}
			}
		} else if !time.Now().Before(end) {
			return
		}
		if cfg.Messages > 0 && r.claimed.Add(1) > cfg.Messages {
			return
		}
		select {
		case w.window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if interval == 0 {
			t0 = time.Now()
		}
		fill(w, k, t0, body)
		w.outstanding.Add(1)
		if err := w.s.send(ctx, body, t0); err != nil {
			w.outstanding.Add(-1)
			<-w.window
			r.failed.Add(1)
			r.errs.add(err)
			return
		}
		r.sent.Add(1)
	}
}

// stampBody writes the e2e header into a body: the intended send time
// (Unix ns), the worker and its sequence number.
func stampBody(body []byte, t0 time.Time, worker int, seq int64) {
	binary.BigEndian.PutUint64(body[0:8], uint64(t0.UnixNano()))
	binary.BigEndian.PutUint32(body[8:12], uint32(worker))
	binary.BigEndian.PutUint32(body[12:16], uint32(seq))
}

// parallel runs fn for 0..n-1 with at most conc at a time, stopping at
// the first error.
func parallel(ctx context.Context, n, conc int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}
