package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// E2EConfig configures the end-to-end scenario.
type E2EConfig struct {
	// D2CConfig is the sending side; Rate should be fixed (RunE2E uses
	// 20000 msgs/s when it is 0), since latency under saturation measures
	// queueing, not the path.
	D2CConfig
	// ConsumerGroup is the reader's consumer group. Default $Default.
	ConsumerGroup string
	// Credit is each partition receiver's link credit. Default 1000.
	Credit int
}

// RunE2E runs the end-to-end scenario: devices send at a fixed rate while
// a consumer reads every partition of the Event-Hub-compatible endpoint
// live (from the end of the stream). The report's Latency is the time from
// each message's intended send time to its arrival at the consumer;
// AckLatency is the devices' acknowledgement latency. With a generic
// target the consumer reads the same address the devices send to.
func RunE2E(ctx context.Context, t *Target, cfg E2EConfig) (*Report, error) {
	if cfg.Rate == 0 {
		cfg.Rate = 20000
	}
	if cfg.ConsumerGroup == "" {
		cfg.ConsumerGroup = "$Default"
	}
	if cfg.Credit == 0 {
		cfg.Credit = 1000
	}
	if err := cfg.D2CConfig.defaults(); err != nil {
		return nil, err
	}
	if cfg.MessageSize < 16 {
		return nil, errors.New("loadgen: e2e messages need at least 16 bytes for the timestamp")
	}
	cons, err := openConsumer(ctx, t, cfg.ConsumerGroup, int32(cfg.Credit))
	if err != nil {
		return nil, err
	}
	defer cons.close()
	ids, err := t.identities(ctx, cfg.Connections)
	if err != nil {
		return nil, err
	}
	run := newSendRun(t, cfg.D2CConfig, ids)
	if err := run.open(ctx); err != nil {
		run.closeAll()
		return nil, err
	}
	cons.start(len(ids))
	rep := run.run(ctx, "e2e", func(w *sendWorker, seq int64, t0 time.Time, body []byte) {
		stampBody(body, t0, w.idx, seq)
	})
	// Everything accepted must reach the consumer.
	deadline := time.Now().Add(cfg.Drain)
	for cons.received.Load() < rep.Accepted && time.Now().Before(deadline) && ctx.Err() == nil && cons.err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cons.close()
	rep.AckLatency = rep.Latency
	rep.Latency = summarize(merged(cons.recs))
	rep.Received = cons.received.Load()
	rep.Duplicates = cons.dups.Load()
	if err := cons.err(); err != nil {
		rep.Errors = append(rep.Errors, "consumer: "+err.Error())
	}
	return rep, nil
}

// consumer reads the messages the devices send: every partition of the
// Event-Hub-compatible endpoint, or the generic target's address.
type consumer struct {
	conn *goamqp.Conn
	rcvs []*goamqp.Receiver
	recs []*recorder

	received atomic.Int64
	dups     atomic.Int64
	// last holds, per sending worker, the highest sequence number seen:
	// one device's messages arrive in order, so anything at or below it
	// is a duplicate.
	last []atomic.Int64

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	errMu    sync.Mutex
	firstErr error
	once     sync.Once
}

func openConsumer(ctx context.Context, t *Target, group string, credit int32) (*consumer, error) {
	c := &consumer{}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var login Login
	var addrs []string
	var opts goamqp.ReceiverOptions
	switch {
	case t.Hub != nil:
		var err error
		if login, err = t.Hub.ServiceLogin(); err != nil {
			return nil, err
		}
		opts = goamqp.ReceiverOptions{
			Credit:  credit,
			Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter("amqp.annotation.x-opt-offset > '@latest'")},
		}
	case t.Generic != nil:
		login = t.Generic.Login
		addrs = []string{t.Generic.Address}
		opts = goamqp.ReceiverOptions{Credit: credit, SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr()}
	default:
		return nil, errors.New("loadgen: the target has neither Hub nor Generic set")
	}
	conn, err := t.dialAMQP(ctx, login, true)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("loadgen: consumer session: %w", err)
	}
	if t.Hub != nil {
		m, err := newEHManagement(ctx, sess)
		if err != nil {
			conn.Close()
			return nil, err
		}
		ids, err := m.partitionIDs(ctx, t.Hub.entity())
		m.close(ctx)
		if err != nil {
			conn.Close()
			return nil, err
		}
		for _, p := range ids {
			addrs = append(addrs, partitionAddress(t.Hub.entity(), group, p))
		}
	}
	for _, a := range addrs {
		r, err := sess.NewReceiver(ctx, a, &opts)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("loadgen: consumer attach %s: %w", a, err)
		}
		c.rcvs = append(c.rcvs, r)
		c.recs = append(c.recs, newRecorder())
	}
	return c, nil
}

// start begins receiving; workers is the number of sending workers.
func (c *consumer) start(workers int) {
	c.last = make([]atomic.Int64, workers)
	for i := range c.last {
		c.last[i].Store(-1)
	}
	for i, r := range c.rcvs {
		c.wg.Add(1)
		go c.receive(r, c.recs[i])
	}
}

func (c *consumer) receive(r *goamqp.Receiver, rec *recorder) {
	defer c.wg.Done()
	for {
		m, err := r.Receive(c.ctx, nil)
		if err != nil {
			if c.ctx.Err() == nil {
				c.setErr(err)
			}
			return
		}
		now := time.Now()
		// A no-op for pre-settled events (the Event-Hub-compatible
		// endpoint's); settles a broker's queue deliveries.
		r.AcceptMessage(c.ctx, m)
		body := m.GetData()
		if len(body) < 16 {
			continue // not one of ours
		}
		t0 := time.Unix(0, int64(binary.BigEndian.Uint64(body[0:8])))
		w := int(binary.BigEndian.Uint32(body[8:12]))
		seq := int64(binary.BigEndian.Uint32(body[12:16]))
		if w >= len(c.last) {
			continue
		}
		if prev := c.last[w].Load(); seq <= prev {
			c.dups.Add(1)
			continue
		}
		c.last[w].Store(seq)
		rec.record(now.Sub(t0))
		c.received.Add(1)
	}
}

func (c *consumer) setErr(err error) {
	c.errMu.Lock()
	if c.firstErr == nil {
		c.firstErr = err
	}
	c.errMu.Unlock()
}

func (c *consumer) err() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.firstErr
}

func (c *consumer) close() {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
		c.conn.Close()
	})
}
