package c2d

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble"
)

// ValidQueueID checks a queue id as every store does: not empty, at most
// MaxIDBytes.
func ValidQueueID(queueID string) error {
	if queueID == "" {
		return fmt.Errorf("empty queue id: %w", ErrInvalid)
	}
	if len(queueID) > MaxIDBytes {
		return fmt.Errorf("queue id of %d bytes exceeds %d: %w", len(queueID), MaxIDBytes, ErrInvalid)
	}
	return nil
}

// CheckNew checks a message before it is enqueued: a known ack mode, ids
// within MaxIDBytes and a body within c.MaxMessageBytes.
func (c *Config) CheckNew(m *NewMessage) error {
	if !m.Ack.valid() {
		return fmt.Errorf("ack mode %d: %w", m.Ack, ErrInvalid)
	}
	for _, f := range []struct{ name, v string }{
		{"device id", m.DeviceID}, {"generation id", m.GenerationID}, {"message id", m.MessageID},
	} {
		if len(f.v) > MaxIDBytes {
			return fmt.Errorf("%s of %d bytes exceeds %d: %w", f.name, len(f.v), MaxIDBytes, ErrInvalid)
		}
	}
	if len(m.Body) > c.MaxMessageBytes {
		return fmt.Errorf("body of %d bytes exceeds %d: %w", len(m.Body), c.MaxMessageBytes, ErrInvalid)
	}
	return nil
}

// queueLocked returns queueID's queue, creating it.
func (s *PebbleStore) queueLocked(queueID string) *queue {
	q := s.queues[queueID]
	if q == nil {
		q = &queue{id: queueID, watchers: make(map[chan struct{}]struct{})}
		s.queues[queueID] = q
	}
	return q
}

// dropIfIdleLocked forgets an empty, unwatched queue so that a hub with a
// million devices only holds the queues that have something in them.
func (s *PebbleStore) dropIfIdleLocked(q *queue) {
	if len(q.msgs) == 0 && len(q.watchers) == 0 && s.queues[q.id] == q {
		delete(s.queues, q.id)
	}
}

func (s *PebbleStore) findMsgLocked(queueID string, seq uint64) *msg {
	q := s.queues[queueID]
	if q == nil {
		return nil
	}
	i, ok := slices.BinarySearchFunc(q.msgs, seq, func(m *msg, seq uint64) int { return cmpU64(m.seq, seq) })
	if !ok {
		return nil
	}
	return q.msgs[i]
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (m *msg) expired(now time.Time) bool { return !now.Before(m.h.expiresAt) }

func (m *msg) locked(now time.Time) bool {
	return !m.st.token.IsZero() && now.Before(m.st.lockedUntil)
}

func (m *msg) available(now time.Time) bool {
	return m.committed && !m.removed && !m.expired(now) && !m.locked(now)
}

func (s *PebbleStore) notifyLocked(q *queue) {
	for ch := range q.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (s *PebbleStore) availableLocked(q *queue, now time.Time) bool {
	for _, m := range q.msgs {
		if m.available(now) {
			return true
		}
	}
	return false
}

// removeMsgLocked deletes m from memory and disk. retire remembers its token
// as lost (ErrLockLost); otherwise the token is forgotten (ErrNotFound).
func (s *PebbleStore) removeMsgLocked(m *msg, retire bool) {
	q := m.q
	if i, ok := slices.BinarySearchFunc(q.msgs, m.seq, func(x *msg, seq uint64) int { return cmpU64(x.seq, seq) }); ok {
		q.msgs = slices.Delete(q.msgs, i, i+1)
	}
	m.removed = true
	s.timers.unschedule(&m.expiry)
	s.timers.unschedule(&m.lock)
	if !m.st.token.IsZero() {
		delete(s.byToken, m.st.token)
		if retire {
			s.retired.add(m.st.token, retiredOwner{queueID: q.id})
		}
	}
	s.del(queueKey(prefixMessage, q.id, m.seq))
	if m.hasStateKey {
		s.del(queueKey(prefixState, q.id, m.seq))
	}
	s.dropIfIdleLocked(q)
}

// deadLetterLocked ends m with status, writing feedback when its ack mode
// asks for it, in the same batch as the removal.
func (s *PebbleStore) deadLetterLocked(m *msg, st FeedbackStatus, now time.Time, retire bool) {
	s.addFeedbackLocked(m, st, now)
	s.removeMsgLocked(m, retire)
}

// expireQueueLocked dead-letters q's expired messages, so that every
// operation sees the queue as of now even before the sweeper runs. It
// reports whether it changed anything; the caller then waits for the commit,
// so that the feedback it produced is visible when the caller returns.
//
// q.minExpiry is a lower bound of the queue's expiry times, so that the
// usual call, with nothing due, costs O(1) however deep the queue is.
func (s *PebbleStore) expireQueueLocked(q *queue, now time.Time) bool {
	if now.Before(q.minExpiry) {
		return false
	}
	changed := false
	var next time.Time
	for i := 0; i < len(q.msgs); {
		m := q.msgs[i]
		if m.expired(now) {
			s.deadLetterLocked(m, StatusExpired, now, true)
			changed = true
			continue
		}
		if next.IsZero() || m.h.expiresAt.Before(next) {
			next = m.h.expiresAt
		}
		i++
	}
	q.minExpiry = next
	return changed
}

// addMsg appends m to its queue, keeping minExpiry a lower bound.
func (q *queue) addMsg(m *msg) {
	q.msgs = append(q.msgs, m)
	if len(q.msgs) == 1 || m.h.expiresAt.Before(q.minExpiry) {
		q.minExpiry = m.h.expiresAt
	}
}

// Enqueue implements Store.
func (s *PebbleStore) Enqueue(ctx context.Context, queueID string, nm NewMessage) (uint64, error) {
	if err := ValidQueueID(queueID); err != nil {
		return 0, fmt.Errorf("c2d: enqueue: %w", err)
	}
	if err := s.cfg.CheckNew(&nm); err != nil {
		return 0, fmt.Errorf("c2d: enqueue to %q: %w", queueID, err)
	}
	if err := s.writable(); err != nil {
		return 0, fmt.Errorf("c2d: enqueue to %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("c2d: enqueue to %q: %w", queueID, err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	q := s.queueLocked(queueID)
	s.expireQueueLocked(q, now)
	if len(q.msgs) >= s.cfg.MaxDepth {
		s.dropIfIdleLocked(q)
		err := ErrQueueFull
		if cerr := s.releaseAndWait(); cerr != nil {
			err = cerr
		}
		return 0, fmt.Errorf("c2d: enqueue to %q: %d messages pending: %w", queueID, s.cfg.MaxDepth, err)
	}
	h := msgHeader{
		ack:          nm.Ack,
		enqueuedAt:   now,
		expiresAt:    nm.ExpiresAt,
		deviceID:     nm.DeviceID,
		generationID: nm.GenerationID,
		messageID:    nm.MessageID,
	}
	if h.deviceID == "" {
		h.deviceID = queueID
	}
	if h.expiresAt.IsZero() {
		h.expiresAt = now.Add(s.cfg.DefaultTTL)
	}
	m := newMsg(q, s.nextSeqLocked(), h)
	if m.expired(now) {
		// Already past its expiry: it ends at once, as IoT Hub would end it
		// at its first chance, and only its feedback is stored.
		m.removed = true
		s.addFeedbackLocked(m, StatusExpired, now)
		s.dropIfIdleLocked(q)
	} else {
		q.addMsg(m)
		s.set(queueKey(prefixMessage, queueID, m.seq), encodeMessage(&h, nm.Body))
		s.scheduleLocked(&m.expiry, h.expiresAt)
		s.afterCommit(func() {
			m.committed = true
			if !m.removed {
				s.notifyLocked(m.q)
			}
		})
	}
	if err := s.releaseAndWait(); err != nil {
		return 0, fmt.Errorf("c2d: enqueue to %q: %w", queueID, err)
	}
	return m.seq, nil
}

// Lock implements Store. It does not wait for the lock to be durable (see
// the package documentation); it reads the body after releasing mu.
//
// Lock writes (the lock state), so it is refused with ErrNoSpace like the
// other writes although it does not wait: the device could not settle the
// message anyway, and a message it cannot complete only comes back later
// as a duplicate.
func (s *PebbleStore) Lock(ctx context.Context, queueID string) (Message, bool, error) {
	if err := ValidQueueID(queueID); err != nil {
		return Message{}, false, fmt.Errorf("c2d: lock: %w", err)
	}
	if err := s.writable(); err != nil {
		return Message{}, false, fmt.Errorf("c2d: lock on %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return Message{}, false, fmt.Errorf("c2d: lock on %q: %w", queueID, err)
	}
	defer s.inflight.Done()
	// A message deleted between locking it and reading its body (a purge
	// racing the lock) is skipped; a few retries cover any realistic race.
	for attempt := 0; ; attempt++ {
		out, ok, expired := s.lockNextLocked(queueID)
		if expired {
			if err := s.releaseAndWait(); err != nil {
				return Message{}, false, fmt.Errorf("c2d: lock on %q: %w", queueID, err)
			}
		} else {
			s.release()
		}
		if !ok {
			return Message{}, false, nil
		}
		body, err := s.readBody(queueID, out.Seq)
		if err == nil {
			out.Body = body
			return out, true, nil
		}
		if !errors.Is(err, pebble.ErrNotFound) || attempt == 3 {
			return Message{}, false, fmt.Errorf("c2d: lock on %q: read message %d: %w", queueID, out.Seq, err)
		}
		s.mu.Lock()
	}
}

// lockNextLocked locks the oldest available message of queueID. expired
// reports that expired messages were dead-lettered on the way.
func (s *PebbleStore) lockNextLocked(queueID string) (_ Message, ok, expired bool) {
	q := s.queues[queueID]
	if q == nil {
		return Message{}, false, false
	}
	now := s.cfg.Now()
	expired = s.expireQueueLocked(q, now)
	var m *msg
	for _, c := range q.msgs {
		if c.available(now) {
			m = c
			break
		}
	}
	if m == nil {
		return Message{}, false, expired
	}
	if !m.st.token.IsZero() {
		// The previous lock expired; its holder now gets ErrLockLost.
		delete(s.byToken, m.st.token)
		s.retired.add(m.st.token, retiredOwner{queueID: q.id})
	}
	m.st.token = s.newTokenLocked()
	m.st.lockedUntil = now.Add(s.cfg.LockDuration)
	s.byToken[m.st.token] = m
	s.set(queueKey(prefixState, q.id, m.seq), encodeState(&m.st))
	m.hasStateKey = true
	s.scheduleLocked(&m.lock, m.st.lockedUntil)
	return Message{
		QueueID:       q.id,
		Seq:           m.seq,
		LockToken:     m.st.token,
		LockedUntil:   m.st.lockedUntil,
		MessageID:     m.h.messageID,
		DeviceID:      m.h.deviceID,
		GenerationID:  m.h.generationID,
		Ack:           m.h.ack,
		EnqueuedAt:    m.h.enqueuedAt,
		ExpiresAt:     m.h.expiresAt,
		DeliveryCount: m.st.deliveryCount,
	}, true, expired
}

func (s *PebbleStore) readBody(queueID string, seq uint64) ([]byte, error) {
	v, closer, err := s.db.Get(queueKey(prefixMessage, queueID, seq))
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	_, body, err := decodeMessage(v)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), body...), nil
}

// Watch implements Store. An invalid queue id or a closed store gives a
// channel that never fires.
func (s *PebbleStore) Watch(queueID string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	if ValidQueueID(queueID) != nil {
		return ch, func() {}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ch, func() {}
	}
	q := s.queueLocked(queueID)
	q.watchers[ch] = struct{}{}
	if s.availableLocked(q, s.cfg.Now()) {
		ch <- struct{}{}
	}
	stopped := false
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if stopped {
			return
		}
		stopped = true
		delete(q.watchers, ch)
		s.dropIfIdleLocked(q)
	}
}

type settleKind uint8

const (
	settleComplete settleKind = iota
	settleAbandon
	settleReject
)

var settleNames = [...]string{"complete", "abandon", "reject"}

// Complete implements Store.
func (s *PebbleStore) Complete(ctx context.Context, queueID string, token LockToken) error {
	return s.settle(ctx, queueID, token, settleComplete)
}

// Abandon implements Store.
func (s *PebbleStore) Abandon(ctx context.Context, queueID string, token LockToken) error {
	return s.settle(ctx, queueID, token, settleAbandon)
}

// Reject implements Store.
func (s *PebbleStore) Reject(ctx context.Context, queueID string, token LockToken) error {
	return s.settle(ctx, queueID, token, settleReject)
}

func (s *PebbleStore) settle(ctx context.Context, queueID string, token LockToken, kind settleKind) error {
	op := settleNames[kind]
	if err := ValidQueueID(queueID); err != nil {
		return fmt.Errorf("c2d: %s: %w", op, err)
	}
	if err := s.writable(); err != nil {
		return fmt.Errorf("c2d: %s on %q: %w", op, queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("c2d: %s on %q: %w", op, queueID, err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	if q := s.queues[queueID]; q != nil {
		s.expireQueueLocked(q, now)
	}
	m := s.byToken[token]
	if m == nil || m.q.id != queueID {
		err := ErrNotFound
		if o, ok := s.retired.lookup(token); ok && !o.feedback && o.queueID == queueID {
			err = ErrLockLost
		}
		if cerr := s.releaseAndWait(); cerr != nil {
			err = cerr
		}
		return fmt.Errorf("c2d: %s on %q: lock token %s: %w", op, queueID, token, err)
	}
	if !m.locked(now) {
		s.release()
		return fmt.Errorf("c2d: %s on %q: message %d: lock expired at %s: %w",
			op, queueID, m.seq, m.st.lockedUntil.Format(time.RFC3339Nano), ErrLockLost)
	}
	switch kind {
	case settleComplete:
		s.addFeedbackLocked(m, StatusSuccess, now)
		s.removeMsgLocked(m, false)
	case settleReject:
		s.deadLetterLocked(m, StatusRejected, now, false)
	case settleAbandon:
		m.st.deliveryCount++
		if int(m.st.deliveryCount) >= s.cfg.MaxDeliveryCount {
			s.deadLetterLocked(m, StatusDeliveryCountExceeded, now, false)
			break
		}
		delete(s.byToken, m.st.token)
		m.st.token = LockToken{}
		m.st.lockedUntil = time.Time{}
		s.timers.unschedule(&m.lock)
		s.set(queueKey(prefixState, queueID, m.seq), encodeState(&m.st))
		s.afterCommit(func() {
			if !m.removed {
				s.notifyLocked(m.q)
			}
		})
	}
	if err := s.releaseAndWait(); err != nil {
		return fmt.Errorf("c2d: %s on %q: %w", op, queueID, err)
	}
	return nil
}

// Purge implements Store.
func (s *PebbleStore) Purge(ctx context.Context, queueID string) (int, error) {
	if err := ValidQueueID(queueID); err != nil {
		return 0, fmt.Errorf("c2d: purge: %w", err)
	}
	if err := s.writable(); err != nil {
		return 0, fmt.Errorf("c2d: purge %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("c2d: purge %q: %w", queueID, err)
	}
	defer s.inflight.Done()
	n := 0
	if q := s.queues[queueID]; q != nil {
		now := s.cfg.Now()
		s.expireQueueLocked(q, now)
		for _, m := range slices.Clone(q.msgs) {
			s.deadLetterLocked(m, StatusPurged, now, true)
			n++
		}
	}
	if err := s.releaseAndWait(); err != nil {
		return 0, fmt.Errorf("c2d: purge %q: %w", queueID, err)
	}
	return n, nil
}

// DeleteQueue implements Store.
func (s *PebbleStore) DeleteQueue(ctx context.Context, queueID string) error {
	if err := ValidQueueID(queueID); err != nil {
		return fmt.Errorf("c2d: delete queue: %w", err)
	}
	if err := s.writable(); err != nil {
		return fmt.Errorf("c2d: delete queue %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("c2d: delete queue %q: %w", queueID, err)
	}
	defer s.inflight.Done()
	if q := s.queues[queueID]; q != nil {
		for _, m := range slices.Clone(q.msgs) {
			s.removeMsgLocked(m, false)
		}
	}
	for _, fr := range s.fb {
		if !fr.removed && fr.sf.queueID == queueID {
			s.removeFeedbackLocked(fr)
		}
	}
	s.compactFeedbackLocked()
	if err := s.releaseAndWait(); err != nil {
		return fmt.Errorf("c2d: delete queue %q: %w", queueID, err)
	}
	return nil
}

// Pending implements Store.
func (s *PebbleStore) Pending(ctx context.Context, queueID string) (Counts, error) {
	if err := ValidQueueID(queueID); err != nil {
		return Counts{}, fmt.Errorf("c2d: pending: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return Counts{}, fmt.Errorf("c2d: pending %q: %w", queueID, err)
	}
	s.inflight.Done()
	var c Counts
	q := s.queues[queueID]
	if q == nil {
		return c, nil
	}
	now := s.cfg.Now()
	for _, m := range q.msgs {
		switch {
		case m.expired(now):
		case m.locked(now):
			c.Locked++
		default:
			c.Enqueued++
		}
	}
	return c, nil
}

// Sweep implements Store.
func (s *PebbleStore) Sweep(ctx context.Context) error {
	if err := s.writable(); err != nil {
		return fmt.Errorf("c2d: sweep: %w", err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("c2d: sweep: %w", err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	fbAvailable := false
	for t := s.timers.popDue(now); t != nil; t = s.timers.popDue(now) {
		switch t.kind {
		case timerMsgExpiry:
			if !t.m.removed {
				s.deadLetterLocked(t.m, StatusExpired, now, true)
			}
		case timerMsgLock:
			if t.m.available(now) {
				s.notifyLocked(t.m.q)
			}
		case timerFbExpiry:
			if !t.fr.removed {
				s.removeFeedbackLocked(t.fr)
			}
		case timerFbLock:
			s.releaseBatchLocked(t.fb, true)
			fbAvailable = true
		}
	}
	s.compactFeedbackLocked()
	if fbAvailable {
		s.notifyFeedbackLocked()
	}
	if err := s.releaseAndWait(); err != nil {
		return fmt.Errorf("c2d: sweep: %w", err)
	}
	return nil
}
