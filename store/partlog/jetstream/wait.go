package jetstream

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/store/partlog"
)

// watcher follows a partition's stream with a headers-only ordered
// consumer, so that records appended through other nodes wake this node's
// waiters.
type watcher struct {
	once    sync.Once
	mu      sync.Mutex
	stopped bool
	cons    jetstream.Consumer
	cc      jetstream.ConsumeContext
}

// Wait blocks until partition holds a durable record after afterSeq. See
// partlog.Log.
func (l *Log) Wait(ctx context.Context, partition int, afterSeq int64) error {
	p, err := l.part(partition)
	if err != nil {
		return err
	}
	p.startWatch()
	for {
		p.mu.Lock()
		last, notify := p.last, p.notify
		p.mu.Unlock()
		if last > afterSeq {
			return nil
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.closing:
			return fmt.Errorf("jetstream: partition %d: %w", partition, partlog.ErrClosed)
		}
	}
}

// startWatch starts the partition's watcher on first use. It retries in
// the background until the consumer exists, so a waiter is not failed by a
// leader election; meanwhile this Log's own appends still wake it.
func (p *partition) startWatch() {
	p.watch.once.Do(func() { p.l.goBackground(p.runWatch) })
}

func (p *partition) runWatch() {
	backoff := 50 * time.Millisecond
	for {
		err := p.tryWatch()
		if err == nil {
			return
		}
		p.l.opts.Logger.Warn("jetstream: cannot follow partition stream; retrying", "partition", p.id,
			"stream", p.stream, "err", err, "retry_in", backoff)
		select {
		case <-p.l.closing:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (p *partition) tryWatch() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.l.opts.RequestTimeout)
	defer cancel()
	// Starting at the last record tells this node at once about records
	// appended elsewhere since it last looked.
	cons, err := p.l.js.OrderedConsumer(ctx, p.stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverLastPolicy,
		HeadersOnly:       true,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	p.watch.mu.Lock()
	defer p.watch.mu.Unlock()
	if p.watch.stopped {
		return nil
	}
	cc, err := cons.Consume(p.onWatch, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		p.l.opts.Logger.Debug("jetstream: partition watcher", "partition", p.id, "err", err)
	}))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	p.watch.cons, p.watch.cc = cons, cc
	return nil
}

func (p *partition) onWatch(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil || md.Sequence.Stream == 0 {
		p.l.opts.Logger.Warn("jetstream: partition watcher got a message without metadata", "partition", p.id, "err", err)
		return
	}
	p.observeSeq(int64(md.Sequence.Stream) - 1)
}

// stopWatch stops the watcher and deletes its consumer rather than leave
// it to the server's inactivity timeout.
func (p *partition) stopWatch() {
	p.watch.mu.Lock()
	p.watch.stopped = true
	cons, cc := p.watch.cons, p.watch.cc
	p.watch.mu.Unlock()
	if cc == nil {
		return
	}
	cc.Stop()
	info := cons.CachedInfo()
	if info == nil {
		return
	}
	name := info.Name
	if !p.l.nc.IsConnected() {
		return // the server drops it after InactiveThreshold
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(p.l.opts.RequestTimeout, 2*time.Second))
	defer cancel()
	if err := p.l.js.DeleteConsumer(ctx, p.stream, name); err != nil {
		p.l.opts.Logger.Debug("jetstream: delete partition watcher", "partition", p.id, "consumer", name, "err", err)
	}
}
