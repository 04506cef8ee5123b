package jsc2d

import (
	"context"
	"errors"
	"fmt"

	"amqphub/internal/jskv"
)

// errRefresh asks mutate to run the function again on a fresh read: the
// cached value did not know something (a token issued on another node).
var errRefresh = errors.New("refresh")

// maxBatch bounds the operations one write of a queue carries, so that a
// write under a flood of operations stays small and its conflicts cheap.
const maxBatch = 128

// committer writes one queue's operations. Operations that arrive while
// a write of the queue is in flight wait and are applied together, in
// arrival order, by the next write: one CAS for many operations, which is
// what keeps a busy queue (a device settling 30 messages at once while
// the service enqueues and the feedback link takes records) from paying
// one JetStream round trip per operation, one after the other.
type committer struct {
	pending []*op
	// The value being written and its encoding, so that the watcher,
	// which often delivers the write before its acknowledgement arrives,
	// need not decode it.
	writing []byte
	wval    *qval
}

// op is one operation waiting for a committer.
type op struct {
	fn      func(v *qval, t *tx) (bool, error)
	fresh   bool // run on a value read from the bucket (the function asked)
	t       *tx
	changed bool
	err     error
	done    chan struct{}
}

// mutate applies fn to the latest value of queue id and writes the result
// with a CAS on the revision, retrying on conflicts. fn reports whether it
// changed the value; an error with a change still writes the change (an
// expiry met on the way) and then returns the error. It returns the tx of
// the attempt that won, whose bodies are then deleted.
//
// Functions of the operations that reach a queue together run one after
// the other on the same copy, as they would have one write each; fn may be
// run several times (conflicts), so it must reset what it records.
func (s *Store) mutate(ctx context.Context, id string, fn func(v *qval, t *tx) (bool, error)) (*tx, error) {
	return s.enqueueOp(ctx, id, &op{fn: fn, done: make(chan struct{})})
}

func (s *Store) enqueueOp(ctx context.Context, id string, o *op) (*tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	c := s.queues[id]
	if c == nil {
		c = &committer{}
		s.queues[id] = c
		s.commits.Add(1)
		go s.commitLoop(id, c)
	}
	c.pending = append(c.pending, o)
	s.mu.Unlock()
	select {
	case <-o.done:
	case <-ctx.Done():
		// An operation a committer has taken is carried through (its write
		// is bounded by Options.Timeout); one still waiting is withdrawn.
		s.mu.Lock()
		i := indexOp(c.pending, o)
		if i >= 0 {
			c.pending = append(c.pending[:i], c.pending[i+1:]...)
		}
		s.mu.Unlock()
		if i >= 0 {
			return nil, ctx.Err()
		}
		<-o.done
	}
	if o.err == nil || o.changed {
		if o.t != nil {
			s.deleteBodies(o.t.ch.bodies)
		}
	}
	return o.t, o.err
}

func indexOp(ops []*op, o *op) int {
	for i, p := range ops {
		if p == o {
			return i
		}
	}
	return -1
}

// commitLoop writes the queue's waiting operations, a batch per write,
// until none is left.
func (s *Store) commitLoop(id string, c *committer) {
	defer s.commits.Done()
	var retry []*op // operations that asked for a fresh read
	for {
		s.mu.Lock()
		n := min(len(c.pending), maxBatch-len(retry))
		batch := append(retry, c.pending[:n]...)
		c.pending = c.pending[n:]
		if len(batch) == 0 {
			delete(s.queues, id)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		retry = s.commit(id, c, batch)
	}
}

// commit runs one batch: read (cache, or bucket), apply every function,
// write once. It finishes the operations it could and returns those that
// must run again on a fresh read.
func (s *Store) commit(id string, c *committer, batch []*op) (retry []*op) {
	ctx := s.ctx
	finish := func(ops []*op, err error) {
		for _, o := range ops {
			if err != nil {
				o.err, o.changed = err, false
			}
			close(o.done)
		}
	}
	forceFresh := false
	for _, o := range batch {
		forceFresh = forceFresh || o.fresh
	}
	v, rev, ok := s.snapshot(id)
	if forceFresh {
		ok = false
	}
	fresh := false
	for attempt := 0; attempt < maxAttempts; attempt++ {
		if !ok {
			var err error
			if v, rev, err = s.fetch(ctx, id); err != nil {
				finish(batch, err)
				return nil
			}
			fresh = true
		}
		nv := v.clone()
		if nv.ID == "" {
			nv.ID = id
		}
		nv.stamp(rev)
		now := nanos(s.cfg.Now())
		retry = retry[:0]
		var run []*op
		var stray []uint64 // bodies freed by expiries of retried functions
		anyChanged := false
		for _, o := range batch {
			o.t = &tx{now: now, fresh: fresh}
			o.changed, o.err = o.fn(nv, o.t)
			if errors.Is(o.err, errRefresh) && !fresh {
				// The function changed nothing; it runs again after this
				// write, on a value read from the bucket.
				o.fresh = true
				stray = append(stray, o.t.ch.bodies...)
				retry = append(retry, o)
				continue
			}
			anyChanged = anyChanged || o.changed
			run = append(run, o)
		}
		if !anyChanged {
			finish(run, nil)
			return retry
		}
		dropped, data, err := nv.capFeedback(s.opts.MaxValueBytes)
		if err != nil {
			finish(run, err)
			return retry
		}
		if dropped > 0 {
			s.log.Warn("c2d: queue value too large, oldest feedback records dropped", "queue", id, "dropped", dropped)
		}
		s.mu.Lock()
		c.writing, c.wval = data, nv
		s.mu.Unlock()
		newRev, err := s.write(ctx, id, rev, data)
		s.mu.Lock()
		c.writing, c.wval = nil, nil
		s.mu.Unlock()
		if jskv.IsConflict(err) {
			ok = false
			backoff(attempt)
			continue
		}
		if err != nil {
			// The answers of functions that changed nothing may rest on the
			// changes of others in the batch, so all of them fail.
			finish(run, fmt.Errorf("write queue: %w", err))
			return retry
		}
		s.mu.Lock()
		s.putLocked(id, newRev, nv)
		s.mu.Unlock()
		finish(run, nil)
		s.deleteBodies(stray)
		return retry
	}
	finish(batch, errConflict)
	return nil
}
