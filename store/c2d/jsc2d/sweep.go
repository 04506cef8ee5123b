package jsc2d

import (
	"context"
	"encoding/json"
	"errors"
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
	var first error
	for _, id := range due {
		_, err := s.mutate(ctx, id, func(v *qval, t *tx) (bool, error) {
			return v.expire(&s.cfg, t.now, &t.ch), nil
		})
		if err != nil && first == nil {
			first = opErr("sweep", id, err)
		}
	}
	return first
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
	if s.cfg.ManualSweep {
		return
	}
	t := time.NewTicker(s.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if err := s.begin(s.ctx); err != nil {
			return
		}
		holder := s.holdLease()
		if err := s.sweep(s.ctx, holder); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("c2d: sweep", "err", err)
		}
		s.inflight.Done()
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
	e, err := s.kv.Get(ctx, leaseKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		_, err = s.kv.Create(ctx, leaseKey, val)
		return err == nil
	case err != nil:
		return false
	}
	var cur lease
	if json.Unmarshal(e.Value(), &cur) == nil && cur.Node != s.opts.NodeID && now.UnixNano() < cur.Until {
		return false
	}
	_, err = s.kv.Update(ctx, leaseKey, val, e.Revision())
	return err == nil
}
