package c2dsvc

import (
	"errors"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil"
	"amqphub/store/c2d"
)

// feedbackLink is one /messages/serviceBound/feedback link.
type feedbackLink struct {
	svc        *Service
	l          *amqp.Link
	presettled bool
	last       time.Time // when the link's previous batch went out
}

// attachFeedback serves the feedback address, where the service receives.
func (s *Service) attachFeedback(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	if !l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotAllowed, "the service receives feedback on this address; attach a receiver")
	}
	fl := &feedbackLink{svc: s, l: l}
	if l.PeerAttach().SenderSettleMode == frames.SenderSettleSettled {
		fl.presettled = true
		l.SetSenderSettleMode(frames.SenderSettleSettled)
	} else {
		l.SetSenderSettleMode(frames.SenderSettleUnsettled)
	}
	if !s.goTracked(fl.run) {
		return amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down")
	}
	return nil
}

// attachFileNotifications accepts the file-upload notification address,
// which stays empty: the hub has no file upload.
func (s *Service) attachFileNotifications(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	if !l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotAllowed, "the service receives file notifications on this address; attach a receiver")
	}
	l.SetSenderSettleMode(frames.SenderSettleUnsettled)
	return nil
}

// run sends feedback batches while the link lasts.
func (fl *feedbackLink) run() {
	s, l := fl.svc, fl.l
	ch, stop := s.store.WatchFeedback()
	defer stop()
	more := false // the last batch was full: more may be waiting unsignalled
	for {
		if err := l.WaitCredit(s.ctx); err != nil {
			return
		}
		if !more {
			select {
			case <-ch:
			case <-l.Done():
				return
			case <-s.ctx.Done():
				return
			}
		}
		more = false
		if !fl.waitBatch(ch) {
			return
		}
		b, ok, err := s.store.TakeFeedback(s.ctx, s.cfg.FeedbackBatchSize)
		if errors.Is(err, pebbleutil.ErrNoSpace) {
			// Batches pause while the disk is full (see nospace.go).
			if !s.waitForSpace(l) {
				return
			}
			more = true // look again without waiting for a signal
			continue
		}
		if err != nil {
			if s.ctx.Err() == nil {
				s.log.Error("c2d: taking feedback failed; detaching the feedback link", "err", err)
				l.Close(amqp.NewError(amqp.ErrCondInternalError, "the hub could not read feedback"))
			}
			return
		}
		if !ok {
			continue // another feedback link took them
		}
		if !fl.send(b) {
			return
		}
		more = len(b.Records) == s.cfg.FeedbackBatchSize
	}
}

// waitBatch waits until a batch may go: FeedbackBatchSize records are
// available, or FeedbackInterval has passed since the previous batch. It
// reports false when the link or the service ends.
func (fl *feedbackLink) waitBatch(ch <-chan struct{}) bool {
	s, l := fl.svc, fl.l
	for {
		wait := time.Until(fl.last.Add(s.cfg.FeedbackInterval))
		if wait <= 0 || s.availableFeedback() >= s.cfg.FeedbackBatchSize {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
			return true
		case <-ch:
			t.Stop() // more records: count again
		case <-l.Done():
			t.Stop()
			return false
		case <-s.ctx.Done():
			t.Stop()
			return false
		}
	}
}

// availableFeedback counts the records a batch could take now.
func (s *Service) availableFeedback() int {
	n, err := s.store.AvailableFeedback(s.ctx)
	if err != nil {
		return 0
	}
	return n
}

// send sends one batch and reports whether the link is still usable.
func (fl *feedbackLink) send(b c2d.FeedbackBatch) bool {
	s, l := fl.svc, fl.l
	payload, err := s.feedbackMessage(b.Records)
	if err != nil {
		s.log.Error("c2d: encoding feedback failed", "err", err)
		fl.settle(b.LockToken, false)
		return true
	}
	token := b.LockToken
	err = l.Send(s.ctx, &amqp.Outgoing{
		Tag:     append([]byte(nil), token[:]...),
		Payload: payload,
		Settled: fl.presettled,
		OnSettled: func(st frames.DeliveryState, _ error) {
			switch st.(type) {
			case frames.Accepted, frames.Rejected:
				// Rejected feedback is dead-lettered, which for feedback
				// means dropped.
				fl.settle(token, true)
			default: // released, modified, or the link went first
				fl.settle(token, false)
			}
		},
	})
	fl.last = time.Now()
	if err != nil {
		fl.settle(token, false)
		return false
	}
	if fl.presettled {
		fl.settle(token, true)
	}
	return true
}

// settle completes or abandons a batch on a goroutine.
func (fl *feedbackLink) settle(token c2d.LockToken, complete bool) {
	s := fl.svc
	op, f := "abandon", s.store.AbandonFeedback
	if complete {
		op, f = "complete", s.store.CompleteFeedback
	}
	s.goTracked(func() {
		err := f(s.ctx, token)
		switch {
		case err == nil:
		case errors.Is(err, c2d.ErrLockLost), errors.Is(err, c2d.ErrNotFound):
			s.log.Debug("c2d: late feedback settlement ignored", "op", op, "err", err)
		case errors.Is(err, pebbleutil.ErrNoSpace):
			s.log.Debug("c2d: feedback settlement refused for lack of disk space; detaching the feedback link", "op", op, "err", err)
			fl.l.Close(noSpaceError("the hub could not record the outcome of a feedback batch (" + op + "); it will be delivered again"))
		case s.ctx.Err() != nil:
		default:
			s.log.Error("c2d: settling feedback failed", "op", op, "err", err)
		}
	})
}

// feedbackMessage encodes a feedback batch as IoT Hub sends it.
func (s *Service) feedbackMessage(recs []c2d.FeedbackRecord) ([]byte, error) {
	body, err := c2d.MarshalFeedback(recs)
	if err != nil {
		return nil, err
	}
	m := frames.Message{
		Annotations: map[any]any{encoding.Symbol(AnnEnqueuedTime): time.Now()},
		Properties: &frames.Properties{
			UserID:      []byte(s.hubName),
			ContentType: encoding.Symbol(c2d.FeedbackContentType),
		},
		Data: [][]byte{body},
	}
	return m.AppendAMQP(nil)
}
