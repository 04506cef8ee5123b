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

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
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
	cons, err := openConsumer(ctx, t, cfg.Client, cfg.ConsumerGroup, cfg.Credit)
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
// Event-Hub-compatible endpoint, or the generic target's address, with
// go-amqp receivers or one raw connection.
type consumer struct {
	conn  *goamqp.Conn
	rcvs  []*goamqp.Receiver
	raw   *rawConn
	addrs []string
	recs  []*recorder

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

func openConsumer(ctx context.Context, t *Target, client, group string, credit int) (*consumer, error) {
	c := &consumer{}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var login Login
	switch {
	case t.Hub != nil:
		var err error
		if login, err = t.Hub.ServiceLogin(); err != nil {
			return nil, err
		}
		// Partition ids come from the $management node.
		conn, err := t.dialAMQP(ctx, login, true)
		if err != nil {
			return nil, err
		}
		ids, err := func() ([]string, error) {
			sess, err := conn.NewSession(ctx, nil)
			if err != nil {
				return nil, fmt.Errorf("loadgen: consumer session: %w", err)
			}
			m, err := newEHManagement(ctx, sess)
			if err != nil {
				return nil, err
			}
			defer m.close(ctx)
			return m.partitionIDs(ctx, t.Hub.entity())
		}()
		conn.Close()
		if err != nil {
			return nil, err
		}
		for _, p := range ids {
			c.addrs = append(c.addrs, partitionAddress(t.Hub.entity(), group, p))
		}
	case t.Generic != nil:
		login = t.Generic.Login
		c.addrs = []string{t.Generic.Address}
	default:
		return nil, errors.New("loadgen: the target has neither Hub nor Generic set")
	}
	for range c.addrs {
		c.recs = append(c.recs, newRecorder())
	}
	var err error
	if client == ClientRaw {
		err = c.openRaw(ctx, t, login, uint32(credit))
	} else {
		err = c.openGoAMQP(ctx, t, login, int32(credit))
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// latestFilter starts an Event Hubs reader at the end of the stream.
const latestFilter = "amqp.annotation.x-opt-offset > '@latest'"

func (c *consumer) openGoAMQP(ctx context.Context, t *Target, login Login, credit int32) error {
	opts := goamqp.ReceiverOptions{Credit: credit, SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr()}
	if t.Hub != nil {
		opts.Filters = []goamqp.LinkFilter{goamqp.NewSelectorFilter(latestFilter)}
	}
	conn, err := t.dialAMQP(ctx, login, true)
	if err != nil {
		return err
	}
	c.conn = conn
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		return fmt.Errorf("loadgen: consumer session: %w", err)
	}
	for _, a := range c.addrs {
		r, err := sess.NewReceiver(ctx, a, &opts)
		if err != nil {
			return fmt.Errorf("loadgen: consumer attach %s: %w", a, err)
		}
		c.rcvs = append(c.rcvs, r)
	}
	return nil
}

func (c *consumer) openRaw(ctx context.Context, t *Target, login Login, credit uint32) error {
	rc, err := rawDial(ctx, t, login, 64<<10)
	if err != nil {
		return err
	}
	c.raw = rc
	var filter map[encoding.Symbol]any
	if t.Hub != nil {
		filter = selectorFilter(latestFilter)
	}
	for i, a := range c.addrs {
		rec := c.recs[i]
		var secs []frames.Section
		if _, err := rc.attachReceiver(a, filter, credit, func(tr *frames.Transfer) {
			if !tr.HasDeliveryID || tr.More {
				return // the body is in the first frame of our small messages
			}
			now := time.Now()
			var err error
			if secs, err = frames.SplitSections(tr.Payload, secs[:0]); err != nil {
				c.setErr(fmt.Errorf("loadgen: undecodable event: %w", err))
				return
			}
			for _, sec := range secs {
				if sec.Code == frames.CodeData {
					var r encoding.Reader
					r.Reset(sec.Raw)
					if _, _, err := r.ReadDescriptor(); err == nil {
						if body, err := r.ReadBinary(); err == nil {
							c.deliver(body, now, rec)
						}
					}
					return
				}
			}
		}); err != nil {
			return fmt.Errorf("loadgen: consumer attach %s: %w", a, err)
		}
	}
	return nil
}

// selectorFilter is a source filter set holding an Event Hubs selector.
func selectorFilter(expr string) map[encoding.Symbol]any {
	const name = encoding.Symbol("apache.org:selector-filter:string")
	return map[encoding.Symbol]any{name: &encoding.Described{Descriptor: name, Value: expr}}
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
	if c.raw != nil {
		c.raw.start()
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
		c.deliver(m.GetData(), now, rec)
	}
}

// deliver accounts one received body that arrived at now.
func (c *consumer) deliver(body []byte, now time.Time, rec *recorder) {
	if len(body) < 16 {
		return // not one of ours
	}
	t0 := time.Unix(0, int64(binary.BigEndian.Uint64(body[0:8])))
	w := int(binary.BigEndian.Uint32(body[8:12]))
	seq := int64(binary.BigEndian.Uint32(body[12:16]))
	if w >= len(c.last) {
		return
	}
	if prev := c.last[w].Load(); seq <= prev {
		c.dups.Add(1)
		return
	}
	c.last[w].Store(seq)
	rec.record(now.Sub(t0))
	c.received.Add(1)
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
	if c.firstErr == nil && c.raw != nil {
		select {
		case <-c.raw.readerDone:
			c.raw.mu.Lock()
			defer c.raw.mu.Unlock()
			if c.ctx.Err() == nil {
				return c.raw.err
			}
		default:
		}
	}
	return c.firstErr
}

func (c *consumer) close() {
	c.once.Do(func() {
		c.cancel()
		c.wg.Wait()
		if c.conn != nil {
			c.conn.Close()
		}
		if c.raw != nil {
			c.raw.close()
		}
	})
}
