package c2d

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// Operations the hub needs beyond the Store interface: giving a lock back
// when the link that held it is gone, and finding and dropping the state of
// devices that were deleted (or deleted and created again under the same
// id, which gives them a new generation id).

// Release ends the lock of token without counting a delivery, as if the
// lock had expired: the message is available again at once. The hub calls
// it when the link a message was sent on is gone before the device settled
// it (IoT Hub counts only explicit abandons). A token whose lock already
// expired or was replaced gives ErrLockLost; an unknown one ErrNotFound.
// Later settlements with token give ErrLockLost.
func (s *PebbleStore) Release(ctx context.Context, queueID string, token LockToken) error {
	if err := ValidQueueID(queueID); err != nil {
		return fmt.Errorf("c2d: release: %w", err)
	}
	if err := s.writable(); err != nil {
		return fmt.Errorf("c2d: release on %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("c2d: release on %q: %w", queueID, err)
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
		return fmt.Errorf("c2d: release on %q: lock token %s: %w", queueID, token, err)
	}
	if !m.locked(now) {
		s.release()
		return fmt.Errorf("c2d: release on %q: message %d: lock expired at %s: %w",
			queueID, m.seq, m.st.lockedUntil.Format(time.RFC3339Nano), ErrLockLost)
	}
	delete(s.byToken, m.st.token)
	s.retired.add(m.st.token, retiredOwner{queueID: queueID})
	m.st.token = LockToken{}
	m.st.lockedUntil = time.Time{}
	s.timers.unschedule(&m.lock)
	s.set(queueKey(prefixState, queueID, m.seq), encodeState(&m.st))
	// Available at once in memory: a crash before the commit only leaves
	// the old lock on disk, which expires after the restart.
	s.notifyLocked(m.q)
	if err := s.releaseAndWait(); err != nil {
		return fmt.Errorf("c2d: release on %q: %w", queueID, err)
	}
	return nil
}

// Generations returns, for every queue that holds pending messages or
// unexpired feedback records, the distinct generation ids those carry (the
// GenerationID of NewMessage, the DeviceGenerationID of feedback), sorted.
// The hub compares them with its registry to find deleted devices. It costs
// one pass over the pending messages and feedback records.
func (s *PebbleStore) Generations(ctx context.Context) (map[string][]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("c2d: generations: %w", err)
	}
	s.inflight.Done()
	now := s.cfg.Now()
	out := make(map[string][]string)
	add := func(q, gen string) {
		if !slices.Contains(out[q], gen) {
			out[q] = append(out[q], gen)
		}
	}
	for id, q := range s.queues {
		for _, m := range q.msgs {
			if !m.removed && !m.expired(now) {
				add(id, m.h.generationID)
			}
		}
	}
	for _, fr := range s.fb {
		if !fr.removed && now.Before(fr.sf.expiresAt) {
			add(fr.sf.queueID, fr.sf.rec.DeviceGenerationID)
		}
	}
	for _, gens := range out {
		slices.Sort(gens)
	}
	return out, nil
}

// DropGenerations removes from queueID, without feedback, the messages and
// the pending feedback records whose generation id differs from keep (all
// of them when keep is empty), as deleting a device does; it returns how
// many messages it removed. Records of feedback batches that are locked
// are removed too: settling such a batch skips them. Tokens of removed
// messages give ErrLockLost afterwards.
func (s *PebbleStore) DropGenerations(ctx context.Context, queueID, keep string) (int, error) {
	if err := ValidQueueID(queueID); err != nil {
		return 0, fmt.Errorf("c2d: drop generations: %w", err)
	}
	if err := s.writable(); err != nil {
		return 0, fmt.Errorf("c2d: drop generations of %q: %w", queueID, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("c2d: drop generations of %q: %w", queueID, err)
	}
	defer s.inflight.Done()
	stale := func(gen string) bool { return keep == "" || gen != keep }
	n := 0
	if q := s.queues[queueID]; q != nil {
		for _, m := range slices.Clone(q.msgs) {
			if stale(m.h.generationID) {
				s.removeMsgLocked(m, true)
				n++
			}
		}
	}
	for _, fr := range s.fb {
		if !fr.removed && fr.sf.queueID == queueID && stale(fr.sf.rec.DeviceGenerationID) {
			s.removeFeedbackLocked(fr)
		}
	}
	s.compactFeedbackLocked()
	if err := s.releaseAndWait(); err != nil {
		return 0, fmt.Errorf("c2d: drop generations of %q: %w", queueID, err)
	}
	return n, nil
}

// AvailableFeedback counts the feedback records TakeFeedback would hand
// out now: durable, unexpired and in no batch whose lock holds. A batcher
// uses it to decide whether a full batch is waiting; PendingFeedback also
// counts locked records and records whose commit is still under way.
func (s *PebbleStore) AvailableFeedback(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("c2d: available feedback: %w", err)
	}
	s.inflight.Done()
	now := s.cfg.Now()
	n := 0
	for _, fr := range s.fb {
		if fr.available(now) {
			n++
		}
	}
	return n, nil
}
