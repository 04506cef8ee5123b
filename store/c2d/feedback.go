package c2d

import (
	"context"
	"fmt"
	"time"
)

// addFeedbackLocked records m's outcome when its ack mode asks for it. The
// record joins the batch of the state change, so both commit or neither.
func (s *PebbleStore) addFeedbackLocked(m *msg, st FeedbackStatus, now time.Time) {
	if !m.h.ack.Wants(st) {
		return
	}
	fr := &fbRecord{
		seq: s.nextSeqLocked(),
		sf: storedFeedback{
			rec: FeedbackRecord{
				OriginalMessageID:  m.h.messageID,
				DeviceID:           m.h.deviceID,
				DeviceGenerationID: m.h.generationID,
				Status:             st,
				EnqueuedTime:       now,
			},
			queueID:   m.q.id,
			expiresAt: now.Add(s.cfg.FeedbackTTL),
		},
	}
	fr.expiry = timer{kind: timerFbExpiry, idx: -1, fr: fr}
	s.fb = append(s.fb, fr)
	s.set(feedbackKey(fr.seq), encodeFeedback(&fr.sf))
	s.scheduleLocked(&fr.expiry, fr.sf.expiresAt)
	s.afterCommit(func() {
		fr.committed = true
		if !fr.removed {
			s.notifyFeedbackLocked()
		}
	})
}

// removeFeedbackLocked deletes a record. A batch that holds it keeps the
// pointer and skips it when settled.
func (s *PebbleStore) removeFeedbackLocked(fr *fbRecord) {
	fr.removed = true
	s.fbRemoved++
	s.timers.unschedule(&fr.expiry)
	s.del(feedbackKey(fr.seq))
}

// compactFeedbackLocked drops removed records from s.fb once they are the
// majority. It must not run while s.fb is being iterated.
func (s *PebbleStore) compactFeedbackLocked() {
	if s.fbRemoved < 64 || s.fbRemoved*2 < len(s.fb) {
		return
	}
	kept := s.fb[:0]
	for _, fr := range s.fb {
		if !fr.removed {
			kept = append(kept, fr)
		}
	}
	clear(s.fb[len(kept):])
	s.fb = kept
	s.fbRemoved = 0
}

// releaseBatchLocked ends b's lock. retire remembers its token as lost.
func (s *PebbleStore) releaseBatchLocked(b *fbBatch, retire bool) {
	if s.fbBatches[b.token] != b {
		return
	}
	delete(s.fbBatches, b.token)
	s.timers.unschedule(&b.lock)
	for _, fr := range b.recs {
		if fr.lockedBy == b {
			fr.lockedBy = nil
		}
	}
	if retire {
		s.retired.add(b.token, retiredOwner{feedback: true})
	}
}

func (fr *fbRecord) available(now time.Time) bool {
	return fr.committed && !fr.removed && now.Before(fr.sf.expiresAt) &&
		(fr.lockedBy == nil || !now.Before(fr.lockedBy.lockedUntil))
}

func (s *PebbleStore) feedbackAvailableLocked(now time.Time) bool {
	for _, fr := range s.fb {
		if fr.available(now) {
			return true
		}
	}
	return false
}

func (s *PebbleStore) notifyFeedbackLocked() {
	for ch := range s.fbWatchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// TakeFeedback implements Store. It does not wait for durability: the
// only writes it can make are deletions of expired records. It is refused
// with ErrNoSpace all the same, as Lock is: a batch the service cannot
// complete would only come back as a duplicate.
func (s *PebbleStore) TakeFeedback(ctx context.Context, maxRecords int) (FeedbackBatch, bool, error) {
	if maxRecords <= 0 {
		return FeedbackBatch{}, false, fmt.Errorf("c2d: take feedback: max %d: %w", maxRecords, ErrInvalid)
	}
	if err := s.writable(); err != nil {
		return FeedbackBatch{}, false, fmt.Errorf("c2d: take feedback: %w", err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return FeedbackBatch{}, false, fmt.Errorf("c2d: take feedback: %w", err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	var recs []*fbRecord
	for _, fr := range s.fb {
		if fr.removed || !fr.committed {
			continue
		}
		if !now.Before(fr.sf.expiresAt) {
			s.removeFeedbackLocked(fr)
			continue
		}
		if b := fr.lockedBy; b != nil {
			if now.Before(b.lockedUntil) {
				continue
			}
			s.releaseBatchLocked(b, true)
		}
		recs = append(recs, fr)
		if len(recs) == maxRecords {
			break
		}
	}
	s.compactFeedbackLocked()
	if len(recs) == 0 {
		s.release()
		return FeedbackBatch{}, false, nil
	}
	b := &fbBatch{token: s.newTokenLocked(), lockedUntil: now.Add(s.cfg.FeedbackLockDuration), recs: recs}
	b.lock = timer{kind: timerFbLock, idx: -1, fb: b}
	s.fbBatches[b.token] = b
	s.scheduleLocked(&b.lock, b.lockedUntil)
	out := FeedbackBatch{LockToken: b.token, LockedUntil: b.lockedUntil, Records: make([]FeedbackRecord, len(recs))}
	for i, fr := range recs {
		fr.lockedBy = b
		out.Records[i] = fr.sf.rec
	}
	s.release()
	return out, true, nil
}

// WatchFeedback implements Store.
func (s *PebbleStore) WatchFeedback() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ch, func() {}
	}
	s.fbWatchers[ch] = struct{}{}
	if s.feedbackAvailableLocked(s.cfg.Now()) {
		ch <- struct{}{}
	}
	return ch, func() {
		s.mu.Lock()
		delete(s.fbWatchers, ch)
		s.mu.Unlock()
	}
}

// CompleteFeedback implements Store.
func (s *PebbleStore) CompleteFeedback(ctx context.Context, token LockToken) error {
	return s.settleFeedback(ctx, token, true)
}

// AbandonFeedback implements Store.
func (s *PebbleStore) AbandonFeedback(ctx context.Context, token LockToken) error {
	return s.settleFeedback(ctx, token, false)
}

func (s *PebbleStore) settleFeedback(ctx context.Context, token LockToken, complete bool) error {
	op := "abandon"
	if complete {
		op = "complete"
	}
	if err := s.writable(); err != nil {
		return fmt.Errorf("c2d: %s feedback: %w", op, err)
	}
	s.mu.Lock()
	if err := s.begin(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("c2d: %s feedback: %w", op, err)
	}
	defer s.inflight.Done()
	now := s.cfg.Now()
	b := s.fbBatches[token]
	if b == nil {
		err := ErrNotFound
		if o, ok := s.retired.lookup(token); ok && o.feedback {
			err = ErrLockLost
		}
		s.release()
		return fmt.Errorf("c2d: %s feedback: lock token %s: %w", op, token, err)
	}
	if !now.Before(b.lockedUntil) {
		s.releaseBatchLocked(b, true)
		s.notifyFeedbackLocked()
		s.release()
		return fmt.Errorf("c2d: %s feedback: lock expired at %s: %w", op, b.lockedUntil.Format(time.RFC3339Nano), ErrLockLost)
	}
	s.releaseBatchLocked(b, false)
	for _, fr := range b.recs {
		if fr.removed {
			continue
		}
		if complete {
			s.removeFeedbackLocked(fr)
			continue
		}
		fr.deliveries++
		if fr.deliveries >= s.cfg.FeedbackMaxDeliveryCount {
			s.removeFeedbackLocked(fr)
		}
	}
	s.compactFeedbackLocked()
	if !complete {
		s.notifyFeedbackLocked()
	}
	if err := s.releaseAndWait(); err != nil {
		return fmt.Errorf("c2d: %s feedback: %w", op, err)
	}
	return nil
}

// PendingFeedback implements Store.
func (s *PebbleStore) PendingFeedback(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("c2d: pending feedback: %w", err)
	}
	s.inflight.Done()
	now := s.cfg.Now()
	n := 0
	for _, fr := range s.fb {
		if !fr.removed && now.Before(fr.sf.expiresAt) {
			n++
		}
	}
	return n, nil
}
