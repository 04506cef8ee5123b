package jsc2d

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/store/c2d"
)

var _ c2d.Store = (*Store)(nil)

// errNeedBody: the cache said the queue was full, so no body was stored,
// but it has room.
var errNeedBody = errors.New("body needed")

// liveCount counts the queue's unexpired messages, which MaxDepth bounds.
func liveCount(v *qval, now int64) int {
	n := 0
	for i := range v.Msgs {
		if !v.Msgs[i].expired(now) {
			n++
		}
	}
	return n
}

// Enqueue implements c2d.Store. The body is stored first, in the bodies
// stream; the message exists once the queue value that names it is written.
func (s *Store) Enqueue(ctx context.Context, queueID string, nm c2d.NewMessage) (uint64, error) {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return 0, opErr("enqueue", "", err)
	}
	if err := s.cfg.CheckNew(&nm); err != nil {
		return 0, opErr("enqueue", queueID, err)
	}
	if err := s.begin(ctx); err != nil {
		return 0, opErr("enqueue", queueID, err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	h := hdr{
		MsgID: nm.MessageID, DevID: nm.DeviceID, GenID: nm.GenerationID, Ack: uint8(nm.Ack),
		Enq: nanos(now), Exp: nanos(nm.ExpiresAt),
	}
	if h.DevID == "" {
		h.DevID = queueID
	}
	if nm.ExpiresAt.IsZero() {
		h.Exp = nanos(now.Add(s.cfg.DefaultTTL))
	}
	inline := len(nm.Body) <= s.opts.InlineBodyBytes
	if inline {
		h.Data = bytes.Clone(nm.Body) // the caller may reuse its buffer
	}
	needBody := h.Exp > nanos(now) && !inline
	if v, _, ok := s.snapshot(queueID); ok && liveCount(v, nanos(now)) >= s.cfg.MaxDepth {
		needBody = false
	}
	var body uint64
	stored := false
	for range 2 {
		if needBody && body == 0 {
			var err error
			if body, err = s.putBody(ctx, queueID, nm.Body); err != nil {
				return 0, opErr("enqueue", queueID, err)
			}
		}
		var seq uint64
		_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
			stored = false
			changed := v.expire(&s.cfg, t.now, &t.ch)
			if liveCount(v, t.now) >= s.cfg.MaxDepth {
				return changed, fmt.Errorf("%d messages pending: %w", s.cfg.MaxDepth, c2d.ErrQueueFull)
			}
			m := h
			m.Enq = t.now
			if nm.ExpiresAt.IsZero() {
				m.Exp = t.now + int64(s.cfg.DefaultTTL)
			}
			if m.Exp > t.now && body == 0 && !inline {
				return changed, errNeedBody
			}
			v.Seq++
			m.Seq = v.Seq
			seq = m.Seq
			if m.Exp <= t.now {
				// Already past its expiry: only its feedback is stored.
				m.Data = nil
				v.feedback(&s.cfg, &m, c2d.StatusExpired, t.now)
				return true, nil
			}
			m.Body = body
			v.Msgs = append(v.Msgs, m)
			stored = true
			return true, nil
		})
		if errors.Is(err, errNeedBody) {
			needBody = true
			continue
		}
		// A failed write may still have been applied (a timeout), so the
		// body of a message that was to be stored is kept: if the write did
		// not happen, the orphan sweep removes it.
		if !stored && body != 0 {
			s.deleteBodies([]uint64{body})
		}
		if err != nil {
			return 0, opErr("enqueue", queueID, err)
		}
		return seq, nil
	}
	return 0, opErr("enqueue", queueID, errConflict)
}

func (s *Store) putBody(ctx context.Context, queueID string, body []byte) (uint64, error) {
	c, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	ack, err := s.js.Publish(c, s.bodySubject(queueID), body, jetstream.WithExpectStream(s.bodies.CachedInfo().Config.Name))
	if err != nil {
		return 0, fmt.Errorf("store body: %w", err)
	}
	return ack.Sequence, nil
}

func (s *Store) getBody(ctx context.Context, seq uint64) ([]byte, error) {
	c, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	m, err := s.bodies.GetMsg(c, seq)
	if err != nil {
		return nil, err
	}
	if m.Data == nil {
		return []byte{}, nil
	}
	return m.Data, nil
}

// Lock implements c2d.Store. It reads the cached queue: a message enqueued
// on another node an instant ago may not be seen yet, but then the watch
// signal follows as soon as it is.
func (s *Store) Lock(ctx context.Context, queueID string) (c2d.Message, bool, error) {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return c2d.Message{}, false, opErr("lock", "", err)
	}
	if err := s.begin(ctx); err != nil {
		return c2d.Message{}, false, opErr("lock", queueID, err)
	}
	defer s.inflight.Done()
	if _, _, ok := s.snapshot(queueID); !ok {
		return c2d.Message{}, false, nil
	}
	// A message removed between the lock and the body read (a purge on
	// another node) is skipped.
	for attempt := 0; ; attempt++ {
		var out c2d.Message
		var body uint64
		var data []byte
		found := false
		_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
			found = false
			changed := v.expire(&s.cfg, t.now, &t.ch)
			for i := range v.Msgs {
				h := &v.Msgs[i]
				if !h.available(t.now) {
					continue
				}
				// A previous lock expired: its holder now gets ErrLockLost.
				v.retire(h.Tok)
				h.Tok = newToken()
				h.Until = t.now + int64(s.cfg.LockDuration)
				body, data = h.Body, h.Data
				out = message(queueID, h)
				found = true
				return true, nil
			}
			return changed, nil
		})
		if err != nil {
			return c2d.Message{}, false, opErr("lock", queueID, err)
		}
		if !found {
			return c2d.Message{}, false, nil
		}
		if body == 0 {
			out.Body = bytes.Clone(data)
			if out.Body == nil {
				out.Body = []byte{}
			}
			return out, true, nil
		}
		b, err := s.getBody(ctx, body)
		if err == nil {
			out.Body = b
			return out, true, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) || attempt == 3 {
			return c2d.Message{}, false, opErr("lock", queueID, fmt.Errorf("read body of message %d: %w", out.Seq, err))
		}
	}
}

func message(queueID string, h *hdr) c2d.Message {
	return c2d.Message{
		QueueID:       queueID,
		Seq:           h.Seq,
		LockToken:     tokenOf(h.Tok),
		LockedUntil:   fromNanos(h.Until),
		MessageID:     h.MsgID,
		DeviceID:      h.DevID,
		GenerationID:  h.GenID,
		Ack:           c2d.AckMode(h.Ack),
		EnqueuedAt:    fromNanos(h.Enq),
		ExpiresAt:     fromNanos(h.Exp),
		DeliveryCount: h.DC,
	}
}

// Watch implements c2d.Store. The watch is node-local, fed by the bucket
// watcher: a change made on any node signals it.
func (s *Store) Watch(queueID string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	if c2d.ValidQueueID(queueID) != nil {
		return ch, func() {}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ch, func() {}
	}
	e := s.cache[queueID]
	if e == nil {
		e = &entry{}
		s.cache[queueID] = e
	}
	if e.watchers == nil {
		e.watchers = make(map[chan struct{}]struct{})
	}
	e.watchers[ch] = struct{}{}
	now := nanos(s.cfg.Now())
	if e.v != nil {
		if e.v.hasAvailable(now) {
			ch <- struct{}{}
		}
		s.armLocked(e, now)
	}
	stopped := false
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if stopped {
			return
		}
		stopped = true
		delete(e.watchers, ch)
		if len(e.watchers) == 0 && e.timer != nil {
			e.timer.Stop()
		}
		if len(e.watchers) == 0 && e.v == nil && s.cache[queueID] == e {
			delete(s.cache, queueID)
		}
	}
}

type settleKind uint8

const (
	settleComplete settleKind = iota
	settleAbandon
	settleReject
	settleRelease
)

var settleNames = [...]string{"complete", "abandon", "reject", "release"}

// Complete implements c2d.Store.
func (s *Store) Complete(ctx context.Context, queueID string, token c2d.LockToken) error {
	return s.settle(ctx, queueID, token, settleComplete)
}

// Abandon implements c2d.Store.
func (s *Store) Abandon(ctx context.Context, queueID string, token c2d.LockToken) error {
	return s.settle(ctx, queueID, token, settleAbandon)
}

// Reject implements c2d.Store.
func (s *Store) Reject(ctx context.Context, queueID string, token c2d.LockToken) error {
	return s.settle(ctx, queueID, token, settleReject)
}

// Release ends the lock of token without counting a delivery, as if it had
// expired (see c2d.PebbleStore.Release).
func (s *Store) Release(ctx context.Context, queueID string, token c2d.LockToken) error {
	return s.settle(ctx, queueID, token, settleRelease)
}

func (s *Store) settle(ctx context.Context, queueID string, token c2d.LockToken, kind settleKind) error {
	op := settleNames[kind]
	if err := c2d.ValidQueueID(queueID); err != nil {
		return opErr(op, "", err)
	}
	if err := s.begin(ctx); err != nil {
		return opErr(op, queueID, err)
	}
	defer s.inflight.Done()
	_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
		changed := v.expire(&s.cfg, t.now, &t.ch)
		i := v.findTok(token)
		if i < 0 {
			if v.isRetired(token) {
				return changed, fmt.Errorf("lock token %s: %w", token, c2d.ErrLockLost)
			}
			if !t.fresh {
				return false, errRefresh // perhaps issued on another node just now
			}
			return changed, fmt.Errorf("lock token %s: %w", token, c2d.ErrNotFound)
		}
		h := &v.Msgs[i]
		if !h.locked(t.now) {
			return changed, fmt.Errorf("message %d: lock expired at %s: %w",
				h.Seq, fromNanos(h.Until).Format(time.RFC3339Nano), c2d.ErrLockLost)
		}
		switch kind {
		case settleComplete:
			v.feedback(&s.cfg, h, c2d.StatusSuccess, t.now)
			v.remove(i, false, &t.ch)
		case settleReject:
			v.deadLetter(&s.cfg, i, c2d.StatusRejected, t.now, false, &t.ch)
		case settleAbandon:
			h.DC++
			if int(h.DC) >= s.cfg.MaxDeliveryCount {
				v.deadLetter(&s.cfg, i, c2d.StatusDeliveryCountExceeded, t.now, false, &t.ch)
				break
			}
			h.Tok, h.Until = nil, 0
		case settleRelease:
			v.retire(h.Tok)
			h.Tok, h.Until = nil, 0
		}
		return true, nil
	})
	if err != nil {
		return opErr(op, queueID, err)
	}
	return nil
}

// Purge implements c2d.Store.
func (s *Store) Purge(ctx context.Context, queueID string) (int, error) {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return 0, opErr("purge", "", err)
	}
	if err := s.begin(ctx); err != nil {
		return 0, opErr("purge", queueID, err)
	}
	defer s.inflight.Done()
	n := 0
	_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
		changed := v.expire(&s.cfg, t.now, &t.ch)
		n = len(v.Msgs)
		for len(v.Msgs) > 0 {
			v.deadLetter(&s.cfg, 0, c2d.StatusPurged, t.now, true, &t.ch)
		}
		return changed || n > 0, nil
	})
	if err != nil {
		return 0, opErr("purge", queueID, err)
	}
	return n, nil
}

// DeleteQueue implements c2d.Store. The key stays, with only its sequence
// counters, so that sequence numbers never go back.
func (s *Store) DeleteQueue(ctx context.Context, queueID string) error {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return opErr("delete queue", "", err)
	}
	if err := s.begin(ctx); err != nil {
		return opErr("delete queue", queueID, err)
	}
	defer s.inflight.Done()
	_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
		if v.empty() {
			return false, nil
		}
		for _, h := range v.Msgs {
			if h.Body != 0 {
				t.ch.bodies = append(t.ch.bodies, h.Body)
			}
		}
		v.Msgs, v.Fb, v.Retired = nil, nil, nil
		return true, nil
	})
	if err != nil {
		return opErr("delete queue", queueID, err)
	}
	return nil
}

// DropGenerations removes from queueID, without feedback, the messages and
// feedback records whose generation id differs from keep (all when keep is
// empty), as c2d.PebbleStore.DropGenerations.
func (s *Store) DropGenerations(ctx context.Context, queueID, keep string) (int, error) {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return 0, opErr("drop generations", "", err)
	}
	if err := s.begin(ctx); err != nil {
		return 0, opErr("drop generations of", queueID, err)
	}
	defer s.inflight.Done()
	stale := func(gen string) bool { return keep == "" || gen != keep }
	n := 0
	_, err := s.mutate(ctx, queueID, func(v *qval, t *tx) (bool, error) {
		n = 0
		for i := 0; i < len(v.Msgs); {
			if stale(v.Msgs[i].GenID) {
				v.remove(i, true, &t.ch)
				n++
				continue
			}
			i++
		}
		fb := len(v.Fb)
		kept := v.Fb[:0]
		for _, f := range v.Fb {
			if !stale(f.GenID) {
				kept = append(kept, f)
			}
		}
		v.Fb = kept
		return n > 0 || len(v.Fb) != fb, nil
	})
	if err != nil {
		return 0, opErr("drop generations of", queueID, err)
	}
	return n, nil
}

// Pending implements c2d.Store, from the node-local cache.
func (s *Store) Pending(ctx context.Context, queueID string) (c2d.Counts, error) {
	if err := c2d.ValidQueueID(queueID); err != nil {
		return c2d.Counts{}, opErr("pending", "", err)
	}
	if err := s.begin(ctx); err != nil {
		return c2d.Counts{}, opErr("pending", queueID, err)
	}
	defer s.inflight.Done()
	var c c2d.Counts
	v, _, ok := s.snapshot(queueID)
	if !ok {
		return c, nil
	}
	now := nanos(s.cfg.Now())
	for i := range v.Msgs {
		h := &v.Msgs[i]
		switch {
		case h.expired(now):
		case h.locked(now):
			c.Locked++
		default:
			c.Enqueued++
		}
	}
	return c, nil
}

// Generations returns, per queue with pending messages or unexpired
// feedback, the distinct generation ids they carry, sorted; from the cache.
func (s *Store) Generations(ctx context.Context) (map[string][]string, error) {
	if err := s.begin(ctx); err != nil {
		return nil, opErr("generations", "", err)
	}
	defer s.inflight.Done()
	now := nanos(s.cfg.Now())
	out := make(map[string][]string)
	add := func(q, gen string) {
		for _, g := range out[q] {
			if g == gen {
				return
			}
		}
		out[q] = append(out[q], gen)
	}
	s.mu.Lock()
	for id, e := range s.cache {
		if e.v == nil {
			continue
		}
		for i := range e.v.Msgs {
			if !e.v.Msgs[i].expired(now) {
				add(id, e.v.Msgs[i].GenID)
			}
		}
		for i := range e.v.Fb {
			if e.v.Fb[i].live(now) {
				add(id, e.v.Fb[i].GenID)
			}
		}
	}
	s.mu.Unlock()
	for _, g := range out {
		sortStrings(g)
	}
	return out, nil
}
