package jsc2d

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"amqphub/store/c2d"
)

func sortStrings(s []string) { slices.SortFunc(s, strings.Compare) }

// candidate is an available feedback record of a queue.
type candidate struct {
	queue string
	fseq  uint64
	rev   uint64 // effective order revision
}

func cmpCandidate(a, b candidate) int {
	if a.rev != b.rev {
		if a.rev < b.rev {
			return -1
		}
		return 1
	}
	if a.queue != b.queue {
		return strings.Compare(a.queue, b.queue)
	}
	if a.fseq < b.fseq {
		return -1
	}
	if a.fseq > b.fseq {
		return 1
	}
	return 0
}

// pickLocked chooses up to limit available feedback records: queue by
// queue, the queue whose oldest available record is oldest first, all of a
// queue's available records together (in their order). Taking a queue's
// records together keeps a batch to few queues, hence few writes, and its
// latency that of few writes rather than the slowest of up to limit; a
// backlog then drains in batches of whole queues. Order holds within a
// queue; across queues it is by the oldest record.
func (s *Store) pickLocked(now int64, limit int) (queues []string, byQueue map[string][]uint64) {
	type head struct {
		id  string
		e   *entry
		rev uint64
	}
	var heads []head
	for id, e := range s.fbQueues {
		if e.v == nil {
			continue
		}
		for i := range e.v.Fb {
			f := &e.v.Fb[i]
			if f.available(now) {
				rev := f.Rev
				if rev == 0 {
					rev = e.rev
				}
				heads = append(heads, head{id: id, e: e, rev: rev})
				break
			}
		}
	}
	slices.SortFunc(heads, func(a, b head) int {
		return cmpCandidate(candidate{queue: a.id, rev: a.rev}, candidate{queue: b.id, rev: b.rev})
	})
	byQueue = make(map[string][]uint64)
	n := 0
	for _, h := range heads {
		if n >= limit {
			break
		}
		queues = append(queues, h.id)
		for i := range h.e.v.Fb {
			if f := &h.e.v.Fb[i]; f.available(now) && n < limit {
				byQueue[h.id] = append(byQueue[h.id], f.FSeq)
				n++
			}
		}
	}
	return queues, byQueue
}

// TakeFeedback implements c2d.Store. It picks the oldest available records
// from the cache, in the order their writes were committed, and locks them
// with one CAS per queue; records another node locked meanwhile are
// skipped. The batch token can be settled on this node only.
func (s *Store) TakeFeedback(ctx context.Context, maxRecords int) (c2d.FeedbackBatch, bool, error) {
	if maxRecords <= 0 {
		return c2d.FeedbackBatch{}, false, fmt.Errorf("c2d: take feedback: max %d: %w", maxRecords, c2d.ErrInvalid)
	}
	if err := s.begin(ctx); err != nil {
		return c2d.FeedbackBatch{}, false, opErr("take feedback", "", err)
	}
	defer s.inflight.Done()
	tok := newToken()
	for attempt := 0; attempt < 8; attempt++ {
		s.mu.Lock()
		queues, byQueue := s.pickLocked(nanos(s.cfg.Now()), maxRecords)
		s.mu.Unlock()
		if len(queues) == 0 {
			return c2d.FeedbackBatch{}, false, nil
		}
		// One CAS per queue, all queues at once: each joins its queue's
		// next write (see committer), so a batch spanning many busy queues
		// costs about one write's latency, not one per queue.
		until := nanos(s.cfg.Now()) + int64(s.cfg.FeedbackLockDuration)
		type result struct {
			mine []candidate
			recs []c2d.FeedbackRecord
			err  error
		}
		results := make([]result, len(queues))
		var wg sync.WaitGroup
		for qi, q := range queues {
			wg.Add(1)
			go func() {
				defer wg.Done()
				want := byQueue[q]
				r := &results[qi]
				_, r.err = s.mutate(ctx, q, func(v *qval, t *tx) (bool, error) {
					r.mine, r.recs = r.mine[:0], r.recs[:0]
					for i := range v.Fb {
						f := &v.Fb[i]
						if !slices.Contains(want, f.FSeq) || !f.available(t.now) {
							continue
						}
						f.Tok, f.Until, f.Node = tok, until, s.opts.NodeID
						r.mine = append(r.mine, candidate{queue: q, fseq: f.FSeq, rev: f.Rev})
						r.recs = append(r.recs, record(f))
					}
					return len(r.mine) > 0, nil
				})
			}()
		}
		wg.Wait()
		var got []candidate
		recs := map[candidate]c2d.FeedbackRecord{}
		var locked []string
		var firstErr error
		for qi, r := range results {
			if r.err != nil {
				// Hand out what is locked; the rest stays available.
				firstErr = cmp.Or(firstErr, r.err)
				s.log.Warn("c2d: take feedback: lock records", "queue", queues[qi], "err", r.err)
				continue
			}
			if len(r.mine) > 0 {
				locked = append(locked, queues[qi])
				got = append(got, r.mine...)
				for i, c := range r.mine {
					recs[c] = r.recs[i]
				}
			}
		}
		if len(got) == 0 && firstErr != nil {
			return c2d.FeedbackBatch{}, false, opErr("take feedback", "", firstErr)
		}
		if len(got) == 0 {
			continue // every candidate was taken elsewhere; look again
		}
		slices.SortFunc(got, cmpCandidate)
		b := c2d.FeedbackBatch{LockToken: tokenOf(tok), LockedUntil: fromNanos(until), Records: make([]c2d.FeedbackRecord, len(got))}
		for i, c := range got {
			b.Records[i] = recs[c]
		}
		s.mu.Lock()
		s.batches[b.LockToken] = &batch{until: until, queues: locked}
		s.mu.Unlock()
		return b, true, nil
	}
	return c2d.FeedbackBatch{}, false, nil
}

func record(f *fbrec) c2d.FeedbackRecord {
	return c2d.FeedbackRecord{
		OriginalMessageID:  f.MsgID,
		DeviceID:           f.DevID,
		DeviceGenerationID: f.GenID,
		Status:             c2d.FeedbackStatus(f.St),
		EnqueuedTime:       fromNanos(f.At),
	}
}

// WatchFeedback implements c2d.Store.
func (s *Store) WatchFeedback() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ch, func() {}
	}
	s.fbWatchers[ch] = struct{}{}
	if s.feedbackAvailableLocked(nanos(s.cfg.Now())) {
		ch <- struct{}{}
	}
	return ch, func() {
		s.mu.Lock()
		delete(s.fbWatchers, ch)
		s.mu.Unlock()
	}
}

func (s *Store) feedbackAvailableLocked(now int64) bool {
	for _, e := range s.fbQueues {
		if e.v != nil && e.v.hasAvailableFb(now) {
			return true
		}
	}
	return false
}

// CompleteFeedback implements c2d.Store.
func (s *Store) CompleteFeedback(ctx context.Context, token c2d.LockToken) error {
	return s.settleFeedback(ctx, token, true)
}

// AbandonFeedback implements c2d.Store.
func (s *Store) AbandonFeedback(ctx context.Context, token c2d.LockToken) error {
	return s.settleFeedback(ctx, token, false)
}

func (s *Store) retireBatchLocked(t c2d.LockToken) {
	delete(s.batches, t)
	s.retiredFb[t] = struct{}{}
	s.retiredFbQ = append(s.retiredFbQ, t)
	if len(s.retiredFbQ) > retiredFbKeep {
		delete(s.retiredFb, s.retiredFbQ[0])
		s.retiredFbQ = s.retiredFbQ[1:]
	}
}

func (s *Store) settleFeedback(ctx context.Context, token c2d.LockToken, complete bool) error {
	op := "abandon feedback"
	if complete {
		op = "complete feedback"
	}
	if err := s.begin(ctx); err != nil {
		return opErr(op, "", err)
	}
	defer s.inflight.Done()
	now := nanos(s.cfg.Now())
	s.mu.Lock()
	b := s.batches[token]
	if b == nil {
		err := c2d.ErrNotFound
		if _, ok := s.retiredFb[token]; ok {
			err = c2d.ErrLockLost
		}
		s.mu.Unlock()
		return opErr(op, "", fmt.Errorf("lock token %s: %w", token, err))
	}
	if now >= b.until {
		s.retireBatchLocked(token)
		if s.feedbackAvailableLocked(now) {
			notify(s.fbWatchers)
		}
		s.mu.Unlock()
		return opErr(op, "", fmt.Errorf("lock expired at %s: %w", fromNanos(b.until).Format(time.RFC3339Nano), c2d.ErrLockLost))
	}
	delete(s.batches, token)
	s.mu.Unlock()
	errs := make([]error, len(b.queues))
	var wg sync.WaitGroup
	for qi, q := range b.queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[qi] = s.mutate(ctx, q, func(v *qval, t *tx) (bool, error) {
				changed := false
				kept := v.Fb[:0]
				for _, f := range v.Fb {
					if len(f.Tok) == 0 || tokenOf(f.Tok) != token {
						kept = append(kept, f)
						continue
					}
					changed = true
					if complete {
						continue
					}
					f.N++
					if f.N >= s.cfg.FeedbackMaxDeliveryCount {
						continue
					}
					f.Tok, f.Until, f.Node = nil, 0, ""
					kept = append(kept, f)
				}
				v.Fb = kept
				return changed, nil
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		// The records of the queues that failed stay locked until the
		// batch lock expires, then they are delivered again: at least
		// once, as IoT Hub.
		return opErr(op, "", err)
	}
	return nil
}

// PendingFeedback implements c2d.Store: unexpired records, locked or not.
func (s *Store) PendingFeedback(ctx context.Context) (int, error) {
	return s.countFeedback(ctx, "pending feedback", func(f *fbrec, now int64) bool { return f.live(now) })
}

// AvailableFeedback counts the records TakeFeedback would hand out now.
func (s *Store) AvailableFeedback(ctx context.Context) (int, error) {
	return s.countFeedback(ctx, "available feedback", func(f *fbrec, now int64) bool { return f.available(now) })
}

func (s *Store) countFeedback(ctx context.Context, op string, pred func(*fbrec, int64) bool) (int, error) {
	if err := s.begin(ctx); err != nil {
		return 0, opErr(op, "", err)
	}
	defer s.inflight.Done()
	now := nanos(s.cfg.Now())
	n := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.fbQueues {
		if e.v == nil {
			continue
		}
		for i := range e.v.Fb {
			if pred(&e.v.Fb[i], now) {
				n++
			}
		}
	}
	return n, nil
}

// releaseOwnBatches makes the batches a previous process of this node
// took available again: their service link is gone.
func (s *Store) releaseOwnBatches(ctx context.Context) error {
	var queues []string
	s.mu.Lock()
	for id, e := range s.fbQueues {
		if e.v == nil {
			continue
		}
		for i := range e.v.Fb {
			if len(e.v.Fb[i].Tok) != 0 && e.v.Fb[i].Node == s.opts.NodeID {
				queues = append(queues, id)
				break
			}
		}
	}
	s.mu.Unlock()
	for _, q := range queues {
		_, err := s.mutate(ctx, q, func(v *qval, t *tx) (bool, error) {
			changed := false
			for i := range v.Fb {
				f := &v.Fb[i]
				if len(f.Tok) != 0 && f.Node == s.opts.NodeID {
					f.Tok, f.Until, f.Node = nil, 0, ""
					changed = true
				}
			}
			return changed, nil
		})
		if err != nil {
			return fmt.Errorf("queue %q: %w", q, err)
		}
	}
	return nil
}
