package jsc2d

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Sweep implements c2d.Store. It finds due queues in the node-local cache
// (no network traffic when nothing is due) and rewrites only those:
// expired messages are dead-lettered with their feedback, expired feedback
// records dropped. It also signals the local watchers of queues whose lock
// expired and forgets this node's expired feedback batches. Any node may
// run it at any time: the writes are CAS updates like every other.
func (s *Store) Sweep(ctx context.Context) error {
	if err := s.begin(ctx); err != nil {
		return opErr("sweep", "", err)
	}
	defer s.inflight.Done()
	return s.sweep(ctx, true)
}

func (s *Store) sweep(ctx context.Context, write bool) error {
	now := nanos(s.cfg.Now())
	var due []string
	s.mu.Lock()
	fbAvailable := false
	for id, e := range s.cache {
		if e.v == nil {
			continue
		}
		if write && e.v.due(now) {
			due = append(due, id)
		}
		if len(e.watchers) > 0 && e.v.hasAvailable(now) {
			notify(e.watchers)
		}
		if !fbAvailable && e.v.hasAvailableFb(now) {
			fbAvailable = true
		}
	}
	for t, b := range s.batches {
		if now >= b.until {
			s.retireBatchLocked(t)
		}
	}
	if fbAvailable {
		notify(s.fbWatchers)
	}
	s.mu.Unlock()
	for _, id := range due {
		_, err := s.mutate(ctx, id, func(v *qval, t *tx) (bool, error) {
			return v.expire(&s.cfg, t.now, &t.ch), nil
		})
		if err != nil {
			// Stop at the first failure: with NATS unreachable every queue
			// would wait for its own timeout. The next sweep goes on.
			return opErr("sweep", id, err)
		}
	}
	return nil
}

// lease is the value of the sweeper lease key.
type lease struct {
	Node  string `json:"node"`
	Until int64  `json:"until"` // wall clock, Unix nanoseconds
}

// background runs the sweeper when the store owns the clock. Only the node
// holding the lease writes expiries, so that nodes do not race each other
// over the same queues; every node signals its own watchers.
func (s *Store) background() {
	defer s.bg.Done()
	interval := s.opts.SweepInterval
	if s.cfg.ManualSweep {
		interval = healthInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	lastOrphans, lastHealth := time.Now(), time.Now()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if err := s.begin(s.ctx); err != nil {
			return
		}
		if time.Since(lastHealth) >= healthInterval {
			lastHealth = time.Now()
			s.checkWatch(s.ctx)
		}
		if !s.cfg.ManualSweep {
			s.backgroundSweep(&lastOrphans)
		}
		s.inflight.Done()
	}
}

// healthInterval is how often the watcher's progress is checked.
const healthInterval = 2 * time.Second

func (s *Store) backgroundSweep(lastOrphans *time.Time) {
	holder := s.holdLease()
	if err := s.sweep(s.ctx, holder); err != nil && !errors.Is(err, context.Canceled) {
		s.log.Warn("c2d: sweep", "err", err)
	}
	if holder && time.Since(*lastOrphans) >= orphanInterval {
		*lastOrphans = time.Now()
		if err := s.sweepOrphans(s.ctx, orphanAge); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("c2d: sweep orphan bodies", "err", err)
		}
	}
}

// holdLease takes or renews the sweeper lease and reports whether this
// node holds it. Lease times are wall-clock: they coordinate processes,
// not message semantics.
func (s *Store) holdLease() bool {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
	defer cancel()
	now := time.Now()
	val, _ := json.Marshal(lease{Node: s.opts.NodeID, Until: now.Add(leaseFor).UnixNano()})
	if s.leaseRev != 0 {
		// Renewing a lease we hold is one CAS; it fails only if another
		// node took the lease after ours had lapsed.
		rev, err := s.kv.Update(ctx, leaseKey, val, s.leaseRev)
		if err == nil {
			s.leaseRev = rev
			return true
		}
		s.leaseRev = 0
	}
	e, err := s.kv.Get(ctx, leaseKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		s.leaseRev, err = s.kv.Create(ctx, leaseKey, val)
		return err == nil
	case err != nil:
		return false
	}
	var cur lease
	if json.Unmarshal(e.Value(), &cur) == nil && cur.Node != s.opts.NodeID && now.UnixNano() < cur.Until {
		return false
	}
	s.leaseRev, err = s.kv.Update(ctx, leaseKey, val, e.Revision())
	return err == nil
}

// orphanInterval is how often the lease holder looks for bodies that no
// queue names; orphanAge is how old such a body must be, so that a body
// whose Enqueue is still writing the queue value is never taken for one.
const (
	orphanInterval = 5 * time.Minute
	orphanAge      = 10 * time.Minute
)

// sweepOrphans deletes bodies no queue names: left by an Enqueue that
// failed after storing its body, or by a body deletion that failed after
// its message was settled. It reads the stream's headers only (one pass,
// without the bodies) and compares with the cache.
func (s *Store) sweepOrphans(ctx context.Context, age time.Duration) error {
	info, err := s.bodies.Info(ctx)
	if err != nil {
		return fmt.Errorf("bodies stream info: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	last := info.State.LastSeq
	cons, err := s.bodies.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{HeadersOnly: true})
	if err != nil {
		return fmt.Errorf("bodies consumer: %w", err)
	}
	live := map[uint64]struct{}{}
	s.mu.Lock()
	for _, e := range s.cache {
		if e.v != nil {
			for i := range e.v.Msgs {
				live[e.v.Msgs[i].Body] = struct{}{}
			}
		}
	}
	s.mu.Unlock()
	cutoff := time.Now().Add(-age)
	var orphans []uint64
	for done := false; !done; {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return fmt.Errorf("read bodies: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			seq := md.Sequence.Stream
			if _, ok := live[seq]; !ok && md.Timestamp.Before(cutoff) {
				orphans = append(orphans, seq)
			}
			if seq >= last {
				done = true
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("read bodies: %w", err)
		}
		if n == 0 {
			break
		}
	}
	if len(orphans) > 0 {
		s.log.Info("c2d: deleting orphan message bodies", "count", len(orphans))
		s.deleteBodies(orphans)
	}
	return nil
}
