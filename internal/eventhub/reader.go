package eventhub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"amqphub/amqp"
	"amqphub/store/partlog"
)

// reader is one attached partition reader and its goroutine.
type reader struct {
	ep       *endpoint
	link     *amqp.Link
	part     int
	key      ownerKey
	group    string // as stored
	epoch    int64
	hasEpoch bool
	name     string // com.microsoft:receiver-name
	metrics  bool   // runtime metric requested
	// id names the reader in lease records and rev is the lease record's
	// revision that admitted it (cluster only; set under ep.mu).
	id  string
	rev uint64

	next int64 // sequence number of the next event to send; run's own

	drainReq atomic.Bool
	mu       sync.Mutex
	wake     context.CancelFunc // cancels the current tail wait
}

// onDrain runs on the connection's reader goroutine when the client asks
// to drain: the goroutine sends what the log holds, then gives the rest
// of the credit back.
func (r *reader) onDrain() {
	r.drainReq.Store(true)
	r.mu.Lock()
	if r.wake != nil {
		r.wake()
	}
	r.mu.Unlock()
}

// run delivers events until the link or the endpoint goes.
func (r *reader) run() {
	ep := r.ep
	defer ep.wg.Done()
	defer ep.release(r)
	ctx, cancel := context.WithCancel(ep.ctx)
	defer cancel()
	go func() {
		select {
		case <-r.link.Done():
			cancel()
		case <-ctx.Done():
		}
	}()

	var (
		recs []partlog.Record
		buf  []byte
		enc  eventEncoder
		info *partlog.Info
	)
	for {
		if r.drainReq.Load() && r.link.Credit() == 0 {
			// All credit was used: still answer the drain, which the
			// client waits for.
			r.drainReq.Store(false)
			r.link.Drain()
		}
		if err := r.link.WaitCredit(ctx); err != nil {
			return
		}
		credit := r.link.Credit()
		if credit == 0 {
			continue
		}
		var err error
		recs, err = ep.log.Read(r.part, r.next, int(min(credit, maxBatchRecords)), maxBatchBytes, recs[:0])
		if err != nil {
			r.fail(err)
			return
		}
		if len(recs) == 0 {
			if r.drainReq.Swap(false) {
				r.link.Drain()
				continue
			}
			if err := r.waitTail(ctx); err != nil {
				if ctx.Err() == nil {
					r.fail(err)
				}
				return
			}
			continue
		}
		if r.metrics {
			in, err := ep.log.Info(r.part)
			if err != nil {
				r.fail(err)
				return
			}
			info = &in
		}
		now := ep.now()
		for i := range recs {
			buf = enc.encode(buf[:0], recs[i], info, now)
			err := r.link.Send(ctx, &amqp.Outgoing{Payload: buf, Settled: true})
			if errors.Is(err, amqp.ErrMessageTooLarge) {
				r.link.Close(amqp.NewError(amqp.ErrCondMessageSizeExceeded, fmt.Sprintf(
					"event %d of partition %d (%d bytes) exceeds the receiver's max-message-size", recs[i].Seq, r.part, len(buf))))
				return
			}
			if err != nil {
				return
			}
			r.next = recs[i].Seq + 1
			recs[i].Payload = nil
		}
	}
}

// waitTail blocks until the partition has an event at r.next, a drain is
// requested (nil), or ctx ends.
func (r *reader) waitTail(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	r.wake = cancel
	r.mu.Unlock()
	if r.drainReq.Load() {
		cancel()
	}
	err := r.ep.log.Wait(wctx, r.part, r.next-1)
	r.mu.Lock()
	r.wake = nil
	r.mu.Unlock()
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return nil // woken for a drain
	}
	return err
}

// fail detaches the link after a log error.
func (r *reader) fail(err error) {
	if errors.Is(err, partlog.ErrClosed) {
		r.link.Close(amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down"))
		return
	}
	r.ep.logger.Error("eventhub: reading the telemetry log", "partition", r.part, "seq", r.next, "err", err)
	r.link.Close(amqp.NewError(amqp.ErrCondInternalError, fmt.Sprintf("partition %d cannot be read: internal error", r.part)))
}
