// Package c2dtest is the conformance suite every c2d.Store backend must
// pass. A backend's test calls Run with a function that opens an empty
// store and can reopen it as after a process restart.
package c2dtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"amqphub/store/c2d"
)

// Clock is a manual clock, safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock stopped at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Opener opens an empty store with cfg for one test and registers its
// cleanup with t. reopen closes the store it last returned and opens the
// same storage again with the same cfg, as a process restart would; it
// fails t on error. The suite always sets cfg.Now to a manual clock and
// cfg.ManualSweep to true, so expiries happen only when the suite says.
type Opener func(t *testing.T, cfg c2d.Config) (s c2d.Store, reopen func() c2d.Store)

// Run runs the conformance suite against the backend open provides.
func Run(t *testing.T, open Opener) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"EnqueueLockOrderAndFields", testEnqueueLockOrderAndFields},
		{"QueuesAreIsolated", testQueuesAreIsolated},
		{"SettlementFeedbackByAckMode", testSettlementFeedbackByAckMode},
		{"AbandonRequeuesInPlace", testAbandonRequeuesInPlace},
		{"LockExpiry", testLockExpiry},
		{"TTLExpiry", testTTLExpiry},
		{"DepthLimit", testDepthLimit},
		{"Purge", testPurge},
		{"DeleteQueue", testDeleteQueue},
		{"FeedbackBatches", testFeedbackBatches},
		{"FeedbackExpiry", testFeedbackExpiry},
		{"Watch", testWatch},
		{"Next", testNext},
		{"Restart", testRestart},
		{"RestartKeepsLockUntilExpiry", testRestartLockExpiry},
		{"SequenceSurvivesEmptyRestart", testSequenceSurvivesEmptyRestart},
		{"Concurrent", testConcurrent},
		{"InvalidInput", testInvalidInput},
		{"Closed", testClosed},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// epoch is a millisecond-aligned start, so that backends storing
// milliseconds compare equal.
var epoch = time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)

type env struct {
	t      *testing.T
	clock  *Clock
	cfg    c2d.Config
	s      c2d.Store
	reopen func() c2d.Store
	ctx    context.Context
}

func newEnv(t *testing.T, open Opener, cfg c2d.Config) *env {
	t.Helper()
	clock := NewClock(epoch)
	cfg.Now = clock.Now
	cfg.ManualSweep = true
	s, reopen := open(t, cfg)
	return &env{t: t, clock: clock, cfg: cfg.WithDefaults(), s: s, reopen: reopen, ctx: context.Background()}
}

func (e *env) restart() { e.t.Helper(); e.s = e.reopen() }

func (e *env) enqueue(q string, nm c2d.NewMessage) uint64 {
	e.t.Helper()
	seq, err := e.s.Enqueue(e.ctx, q, nm)
	if err != nil {
		e.t.Fatalf("Enqueue(%q, %q): %v", q, nm.MessageID, err)
	}
	return seq
}

func (e *env) lock(q string) c2d.Message {
	e.t.Helper()
	m, ok, err := e.s.Lock(e.ctx, q)
	if err != nil || !ok {
		e.t.Fatalf("Lock(%q) = ok %v, err %v; want a message", q, ok, err)
	}
	return m
}

func (e *env) noLock(q string) {
	e.t.Helper()
	m, ok, err := e.s.Lock(e.ctx, q)
	if err != nil || ok {
		e.t.Fatalf("Lock(%q) = seq %d id %q ok %v, err %v; want none", q, m.Seq, m.MessageID, ok, err)
	}
}

func (e *env) pending(q string, want c2d.Counts) {
	e.t.Helper()
	got, err := e.s.Pending(e.ctx, q)
	if err != nil || got != want {
		e.t.Fatalf("Pending(%q) = %+v, %v; want %+v", q, got, err, want)
	}
}

func (e *env) sweep() {
	e.t.Helper()
	if err := e.s.Sweep(e.ctx); err != nil {
		e.t.Fatalf("Sweep: %v", err)
	}
}

func (e *env) wantErr(what string, err, target error) {
	e.t.Helper()
	if !errors.Is(err, target) {
		e.t.Fatalf("%s: err = %v; want %v", what, err, target)
	}
}

func (e *env) ok(what string, err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// drainFeedback takes and completes every available feedback record.
func (e *env) drainFeedback() []c2d.FeedbackRecord {
	e.t.Helper()
	var all []c2d.FeedbackRecord
	for {
		b, ok, err := e.s.TakeFeedback(e.ctx, 1000)
		if err != nil {
			e.t.Fatalf("TakeFeedback: %v", err)
		}
		if !ok {
			return all
		}
		all = append(all, b.Records...)
		e.ok("CompleteFeedback", e.s.CompleteFeedback(e.ctx, b.LockToken))
	}
}

// outcomes summarises records as "messageID:Status" in order.
func outcomes(recs []c2d.FeedbackRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.OriginalMessageID + ":" + r.Status.String()
	}
	return out
}

func (e *env) wantFeedback(want ...string) {
	e.t.Helper()
	got := outcomes(e.drainFeedback())
	if !slices.Equal(got, want) {
		e.t.Fatalf("feedback = %q; want %q", got, want)
	}
}

func signalled(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitSignal waits for a watch signal; a backend may deliver it
// asynchronously, so this waits (bounded) rather than checking once.
func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no signal: %s", what)
	}
}

func testEnqueueLockOrderAndFields(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{LockDuration: 30 * time.Second, DefaultTTL: 2 * time.Hour})
	body := []byte("payload-0")
	in := []c2d.NewMessage{
		{DeviceID: "dev", GenerationID: "gen-1", MessageID: "m0", Ack: c2d.AckFull, Body: body},
		{MessageID: "m1", Ack: c2d.AckNone, ExpiresAt: epoch.Add(10 * time.Minute), Body: []byte{}},
		{DeviceID: "dev", MessageID: "", Ack: c2d.AckPositive, Body: bytes.Repeat([]byte{0, 0xff}, 4096)},
	}
	var seqs []uint64
	for _, nm := range in {
		seqs = append(seqs, e.enqueue("dev", nm))
		e.clock.Advance(time.Second)
	}
	body[0] = 'X' // the store must have copied the body
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequence numbers %v are not increasing", seqs)
		}
	}
	e.pending("dev", c2d.Counts{Enqueued: 3})
	tokens := map[c2d.LockToken]bool{}
	for i, nm := range in {
		m := e.lock("dev")
		wantDev := nm.DeviceID
		if wantDev == "" {
			wantDev = "dev"
		}
		wantBody := nm.Body
		if i == 0 {
			wantBody = []byte("payload-0")
		}
		enq := epoch.Add(time.Duration(i) * time.Second)
		wantExp := nm.ExpiresAt
		if wantExp.IsZero() {
			wantExp = enq.Add(2 * time.Hour)
		}
		switch {
		case m.Seq != seqs[i]:
			t.Fatalf("lock %d: seq %d; want %d (FIFO)", i, m.Seq, seqs[i])
		case m.QueueID != "dev" || m.MessageID != nm.MessageID || m.DeviceID != wantDev || m.GenerationID != nm.GenerationID || m.Ack != nm.Ack:
			t.Fatalf("lock %d: got %+v; want fields of %+v", i, m, nm)
		case !bytes.Equal(m.Body, wantBody):
			t.Fatalf("lock %d: body %q; want %q", i, m.Body, wantBody)
		case !m.EnqueuedAt.Equal(enq) || !m.ExpiresAt.Equal(wantExp):
			t.Fatalf("lock %d: enqueued %v expires %v; want %v %v", i, m.EnqueuedAt, m.ExpiresAt, enq, wantExp)
		case !m.LockedUntil.Equal(e.clock.Now().Add(30 * time.Second)):
			t.Fatalf("lock %d: locked until %v; want now+30s", i, m.LockedUntil)
		case m.DeliveryCount != 0:
			t.Fatalf("lock %d: delivery count %d; want 0", i, m.DeliveryCount)
		case m.LockToken.IsZero() || tokens[m.LockToken]:
			t.Fatalf("lock %d: token %s is zero or reused", i, m.LockToken)
		}
		tokens[m.LockToken] = true
	}
	e.noLock("dev")
	e.noLock("nobody")
	e.pending("dev", c2d.Counts{Locked: 3})
	e.pending("nobody", c2d.Counts{})
}

func testQueuesAreIsolated(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	queues := []string{"a", "b", "a/modules/m", "A"}
	for _, q := range queues {
		e.enqueue(q, c2d.NewMessage{MessageID: "for-" + q})
	}
	locked := map[string]c2d.Message{}
	for _, q := range queues {
		m := e.lock(q)
		if m.MessageID != "for-"+q || m.QueueID != q {
			t.Fatalf("Lock(%q) got %q from %q", q, m.MessageID, m.QueueID)
		}
		e.noLock(q)
		locked[q] = m
	}
	e.wantErr("settle a's token on b", e.s.Complete(e.ctx, "b", locked["a"].LockToken), c2d.ErrNotFound)
	e.wantErr("settle a's token on A", e.s.Reject(e.ctx, "A", locked["a"].LockToken), c2d.ErrNotFound)
	e.ok("complete a", e.s.Complete(e.ctx, "a", locked["a"].LockToken))
	e.pending("a", c2d.Counts{})
	e.pending("b", c2d.Counts{Locked: 1})
	e.pending("a/modules/m", c2d.Counts{Locked: 1})
}

func testSettlementFeedbackByAckMode(t *testing.T, open Opener) {
	type outcome struct {
		name   string
		settle func(e *env, q string)
		status c2d.FeedbackStatus
	}
	outs := []outcome{
		{"complete", func(e *env, q string) {
			e.ok("complete", e.s.Complete(e.ctx, q, e.lock(q).LockToken))
		}, c2d.StatusSuccess},
		{"reject", func(e *env, q string) {
			e.ok("reject", e.s.Reject(e.ctx, q, e.lock(q).LockToken))
		}, c2d.StatusRejected},
		{"abandon-to-limit", func(e *env, q string) {
			for i := 0; i < e.cfg.MaxDeliveryCount; i++ {
				m := e.lock(q)
				if m.DeliveryCount != uint32(i) {
					e.t.Fatalf("delivery %d: DeliveryCount %d", i, m.DeliveryCount)
				}
				e.ok("abandon", e.s.Abandon(e.ctx, q, m.LockToken))
			}
		}, c2d.StatusDeliveryCountExceeded},
		{"purge", func(e *env, q string) {
			n, err := e.s.Purge(e.ctx, q)
			if err != nil || n != 1 {
				e.t.Fatalf("Purge = %d, %v; want 1", n, err)
			}
		}, c2d.StatusPurged},
	}
	acks := []struct {
		ack      c2d.AckMode
		success  bool
		negative bool
	}{
		{c2d.AckNone, false, false},
		{c2d.AckPositive, true, false},
		{c2d.AckNegative, false, true},
		{c2d.AckFull, true, true},
	}
	for _, o := range outs {
		for _, a := range acks {
			t.Run(o.name+"/"+a.ack.String(), func(t *testing.T) {
				e := newEnv(t, open, c2d.Config{MaxDeliveryCount: 3})
				e.enqueue("dev", c2d.NewMessage{DeviceID: "dev", GenerationID: "g7", MessageID: "msg-1", Ack: a.ack})
				e.clock.Advance(5 * time.Second)
				outcomeAt := e.clock.Now()
				o.settle(e, "dev")
				e.pending("dev", c2d.Counts{})
				e.noLock("dev")
				want := a.negative
				if o.status == c2d.StatusSuccess {
					want = a.success
				}
				recs := e.drainFeedback()
				if !want {
					if len(recs) != 0 {
						t.Fatalf("feedback %q; want none for ack %s", outcomes(recs), a.ack)
					}
					return
				}
				wantRec := c2d.FeedbackRecord{OriginalMessageID: "msg-1", DeviceID: "dev", DeviceGenerationID: "g7", Status: o.status, EnqueuedTime: outcomeAt}
				if len(recs) != 1 || !recs[0].EnqueuedTime.Equal(outcomeAt) {
					t.Fatalf("feedback %+v; want [%+v]", recs, wantRec)
				}
				recs[0].EnqueuedTime = outcomeAt
				if recs[0] != wantRec {
					t.Fatalf("feedback %+v; want %+v", recs[0], wantRec)
				}
			})
		}
	}
}

func testAbandonRequeuesInPlace(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{MaxDeliveryCount: 3})
	a := e.enqueue("dev", c2d.NewMessage{MessageID: "A", Ack: c2d.AckFull})
	b := e.enqueue("dev", c2d.NewMessage{MessageID: "B"})
	first := e.lock("dev")
	e.ok("abandon A", e.s.Abandon(e.ctx, "dev", first.LockToken))
	e.pending("dev", c2d.Counts{Enqueued: 2})
	again := e.lock("dev")
	if again.Seq != a || again.DeliveryCount != 1 || again.LockToken == first.LockToken {
		t.Fatalf("after abandon got seq %d count %d (token reused %v); want seq %d count 1 and a new token",
			again.Seq, again.DeliveryCount, again.LockToken == first.LockToken, a)
	}
	e.wantErr("complete with the abandoned token", e.s.Complete(e.ctx, "dev", first.LockToken), c2d.ErrNotFound)
	if m := e.lock("dev"); m.Seq != b {
		t.Fatalf("second lock got seq %d; want B (%d)", m.Seq, b)
	}
	e.ok("abandon A again", e.s.Abandon(e.ctx, "dev", again.LockToken))
	third := e.lock("dev")
	if third.Seq != a || third.DeliveryCount != 2 {
		t.Fatalf("third delivery of A: seq %d count %d; want %d, 2", third.Seq, third.DeliveryCount, a)
	}
	e.ok("abandon A at the limit", e.s.Abandon(e.ctx, "dev", third.LockToken))
	e.pending("dev", c2d.Counts{Locked: 1})
	e.noLock("dev")
	e.wantFeedback("A:DeliveryCountExceeded")
}

func testLockExpiry(t *testing.T, open Opener) {
	lock := 10 * time.Second
	e := newEnv(t, open, c2d.Config{LockDuration: lock, MaxDeliveryCount: 2})
	seq := e.enqueue("dev", c2d.NewMessage{MessageID: "A", Ack: c2d.AckFull})
	e.enqueue("dev", c2d.NewMessage{MessageID: "B"})

	// Expiry returns the message without counting a delivery, however often.
	var tokens []c2d.LockToken
	for i := 0; i < 2*e.cfg.MaxDeliveryCount+1; i++ {
		m := e.lock("dev")
		if m.Seq != seq || m.DeliveryCount != 0 {
			t.Fatalf("round %d: seq %d count %d; want %d, 0", i, m.Seq, m.DeliveryCount, seq)
		}
		tokens = append(tokens, m.LockToken)
		e.pending("dev", c2d.Counts{Enqueued: 1, Locked: 1})
		e.clock.Advance(lock)
		e.pending("dev", c2d.Counts{Enqueued: 2})
	}
	for i, tok := range tokens {
		e.wantErr(fmt.Sprintf("complete with expired token %d", i), e.s.Complete(e.ctx, "dev", tok), c2d.ErrLockLost)
	}
	e.wantErr("abandon with expired token", e.s.Abandon(e.ctx, "dev", tokens[0]), c2d.ErrLockLost)
	e.wantErr("reject with expired token", e.s.Reject(e.ctx, "dev", tokens[1]), c2d.ErrLockLost)
	e.pending("dev", c2d.Counts{Enqueued: 2})

	// One tick before the deadline the lock still holds.
	m := e.lock("dev")
	e.clock.Advance(lock - time.Millisecond)
	e.ok("complete just in time", e.s.Complete(e.ctx, "dev", m.LockToken))
	e.wantFeedback("A:Success")
	if m := e.lock("dev"); m.MessageID != "B" {
		t.Fatalf("got %q; want B", m.MessageID)
	}
}

func testTTLExpiry(t *testing.T, open Opener) {
	for _, tc := range []struct {
		name     string
		locked   bool
		sweep    bool
		ack      c2d.AckMode
		feedback bool
	}{
		{"enqueued/swept/full", false, true, c2d.AckFull, true},
		{"enqueued/swept/negative", false, true, c2d.AckNegative, true},
		{"enqueued/swept/positive", false, true, c2d.AckPositive, false},
		{"enqueued/swept/none", false, true, c2d.AckNone, false},
		{"enqueued/lazy/full", false, false, c2d.AckFull, true},
		{"locked/swept/full", true, true, c2d.AckFull, true},
		{"locked/lazy/negative", true, false, c2d.AckNegative, true},
		{"locked/swept/none", true, true, c2d.AckNone, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, open, c2d.Config{LockDuration: time.Hour})
			e.enqueue("dev", c2d.NewMessage{MessageID: "X", Ack: tc.ack, ExpiresAt: epoch.Add(5 * time.Second)})
			var tok c2d.LockToken
			if tc.locked {
				tok = e.lock("dev").LockToken
			}
			e.clock.Advance(5*time.Second - time.Millisecond)
			if tc.locked {
				e.pending("dev", c2d.Counts{Locked: 1})
			} else {
				e.pending("dev", c2d.Counts{Enqueued: 1})
			}
			e.clock.Advance(time.Millisecond)
			e.pending("dev", c2d.Counts{}) // expired counts as gone, swept or not
			if tc.sweep {
				e.sweep()
			}
			e.noLock("dev")
			if tc.locked {
				e.wantErr("complete expired message", e.s.Complete(e.ctx, "dev", tok), c2d.ErrLockLost)
			}
			if tc.feedback {
				e.wantFeedback("X:Expired")
			} else {
				e.wantFeedback()
			}
		})
	}
	t.Run("DefaultTTL", func(t *testing.T) {
		e := newEnv(t, open, c2d.Config{DefaultTTL: time.Minute})
		e.enqueue("dev", c2d.NewMessage{MessageID: "D", Ack: c2d.AckNegative})
		e.clock.Advance(time.Minute - time.Millisecond)
		e.pending("dev", c2d.Counts{Enqueued: 1})
		e.clock.Advance(time.Millisecond)
		e.sweep()
		e.pending("dev", c2d.Counts{})
		e.wantFeedback("D:Expired")
	})
	t.Run("AlreadyExpiredAtEnqueue", func(t *testing.T) {
		e := newEnv(t, open, c2d.Config{})
		if _, err := e.s.Enqueue(e.ctx, "dev", c2d.NewMessage{MessageID: "P", Ack: c2d.AckFull, ExpiresAt: epoch.Add(-time.Second)}); err != nil {
			t.Fatalf("Enqueue of an expired message: %v", err)
		}
		e.pending("dev", c2d.Counts{})
		e.noLock("dev")
		e.wantFeedback("P:Expired")
	})
}

func testDepthLimit(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{MaxDepth: 3})
	for i := 0; i < 3; i++ {
		e.enqueue("dev", c2d.NewMessage{MessageID: fmt.Sprint(i), ExpiresAt: epoch.Add(time.Duration(i+1) * time.Hour)})
	}
	_, err := e.s.Enqueue(e.ctx, "dev", c2d.NewMessage{MessageID: "over"})
	e.wantErr("4th enqueue", err, c2d.ErrQueueFull)
	e.pending("dev", c2d.Counts{Enqueued: 3})
	e.enqueue("other", c2d.NewMessage{MessageID: "other"})

	m := e.lock("dev")
	_, err = e.s.Enqueue(e.ctx, "dev", c2d.NewMessage{})
	e.wantErr("enqueue with a locked message pending", err, c2d.ErrQueueFull)
	e.ok("complete", e.s.Complete(e.ctx, "dev", m.LockToken))
	e.enqueue("dev", c2d.NewMessage{MessageID: "3", ExpiresAt: epoch.Add(10 * time.Hour)})
	_, err = e.s.Enqueue(e.ctx, "dev", c2d.NewMessage{})
	e.wantErr("enqueue when full again", err, c2d.ErrQueueFull)

	// An expired message frees its place at once, without a sweep.
	e.clock.Advance(2 * time.Hour)
	e.enqueue("dev", c2d.NewMessage{MessageID: "4"})
	e.pending("dev", c2d.Counts{Enqueued: 3})
	var got []string
	for i := 0; i < 3; i++ {
		got = append(got, e.lock("dev").MessageID)
	}
	if want := []string{"2", "3", "4"}; !slices.Equal(got, want) {
		t.Fatalf("queue holds %q; want %q", got, want)
	}
}

func testPurge(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	for _, a := range []c2d.AckMode{c2d.AckNone, c2d.AckPositive, c2d.AckNegative, c2d.AckFull} {
		e.enqueue("dev", c2d.NewMessage{MessageID: a.String(), Ack: a})
	}
	e.enqueue("dev", c2d.NewMessage{MessageID: "short", Ack: c2d.AckFull, ExpiresAt: epoch.Add(time.Second)})
	e.enqueue("keep", c2d.NewMessage{MessageID: "keep", Ack: c2d.AckFull})
	held := e.lock("dev")
	e.clock.Advance(time.Second)
	n, err := e.s.Purge(e.ctx, "dev")
	if err != nil || n != 4 {
		t.Fatalf("Purge = %d, %v; want 4 (the expired one is not purged)", n, err)
	}
	e.pending("dev", c2d.Counts{})
	e.pending("keep", c2d.Counts{Enqueued: 1})
	e.noLock("dev")
	e.wantErr("complete a purged message", e.s.Complete(e.ctx, "dev", held.LockToken), c2d.ErrLockLost)
	e.wantFeedback("short:Expired", "negative:Purged", "full:Purged")
	for _, q := range []string{"dev", "nobody"} {
		if n, err := e.s.Purge(e.ctx, q); err != nil || n != 0 {
			t.Fatalf("Purge(%q) of an empty queue = %d, %v", q, n, err)
		}
	}
}

func testDeleteQueue(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	full := c2d.NewMessage{Ack: c2d.AckFull}
	full.MessageID = "a1"
	e.enqueue("a", full)
	full.MessageID = "a2"
	e.enqueue("a", full)
	full.MessageID = "b1"
	e.enqueue("b", full)
	e.ok("complete a1", e.s.Complete(e.ctx, "a", e.lock("a").LockToken))
	e.ok("reject b1", e.s.Reject(e.ctx, "b", e.lock("b").LockToken))
	batch, ok, err := e.s.TakeFeedback(e.ctx, 10)
	if err != nil || !ok || len(batch.Records) != 2 {
		t.Fatalf("TakeFeedback = %+v, %v, %v; want 2 records", batch, ok, err)
	}
	full.MessageID = "a3"
	e.enqueue("a", full)
	e.ok("complete a2", e.s.Complete(e.ctx, "a", e.lock("a").LockToken))
	held := e.lock("a")
	if n, err := e.s.PendingFeedback(e.ctx); err != nil || n != 3 {
		t.Fatalf("PendingFeedback = %d, %v; want 3", n, err)
	}

	e.ok("DeleteQueue", e.s.DeleteQueue(e.ctx, "a"))
	e.pending("a", c2d.Counts{})
	e.noLock("a")
	e.wantErr("complete after delete", e.s.Complete(e.ctx, "a", held.LockToken), c2d.ErrNotFound)
	if n, err := e.s.PendingFeedback(e.ctx); err != nil || n != 1 {
		t.Fatalf("PendingFeedback after delete = %d, %v; want 1 (b1 only)", n, err)
	}
	// The batch taken before the delete still settles; its "a" record is gone.
	e.ok("complete the earlier batch", e.s.CompleteFeedback(e.ctx, batch.LockToken))
	e.wantFeedback()
	if n, err := e.s.PendingFeedback(e.ctx); err != nil || n != 0 {
		t.Fatalf("PendingFeedback = %d, %v; want 0", n, err)
	}
	// The device can be created again.
	e.enqueue("a", c2d.NewMessage{MessageID: "again"})
	if m := e.lock("a"); m.MessageID != "again" {
		t.Fatalf("got %q after recreate", m.MessageID)
	}
	e.ok("DeleteQueue of an unknown queue", e.s.DeleteQueue(e.ctx, "nobody"))
}

func (e *env) produceSuccess(q string, ids ...string) {
	e.t.Helper()
	for _, id := range ids {
		e.enqueue(q, c2d.NewMessage{MessageID: id, Ack: c2d.AckPositive})
		e.ok("complete "+id, e.s.Complete(e.ctx, q, e.lock(q).LockToken))
	}
}

func (e *env) take(max int, want ...string) c2d.FeedbackBatch {
	e.t.Helper()
	b, ok, err := e.s.TakeFeedback(e.ctx, max)
	if err != nil {
		e.t.Fatalf("TakeFeedback(%d): %v", max, err)
	}
	var got []string
	for _, r := range b.Records {
		got = append(got, r.OriginalMessageID)
	}
	if ok != (len(want) > 0) || !slices.Equal(got, want) {
		e.t.Fatalf("TakeFeedback(%d) = %q ok %v; want %q", max, got, ok, want)
	}
	return b
}

func testFeedbackBatches(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{FeedbackLockDuration: 20 * time.Second})
	e.produceSuccess("dev", "m0", "m1", "m2", "m3", "m4")
	b1 := e.take(2, "m0", "m1")
	if !b1.LockedUntil.Equal(e.clock.Now().Add(20*time.Second)) || b1.LockToken.IsZero() {
		t.Fatalf("batch locked until %v token %s; want now+20s and a token", b1.LockedUntil, b1.LockToken)
	}
	b2 := e.take(2, "m2", "m3")
	b3 := e.take(10, "m4")
	e.take(10)
	if b1.LockToken == b2.LockToken || b2.LockToken == b3.LockToken {
		t.Fatal("batches share a lock token")
	}
	if n, _ := e.s.PendingFeedback(e.ctx); n != 5 {
		t.Fatalf("PendingFeedback = %d; want 5", n)
	}
	e.ok("complete b1", e.s.CompleteFeedback(e.ctx, b1.LockToken))
	e.wantErr("complete b1 twice", e.s.CompleteFeedback(e.ctx, b1.LockToken), c2d.ErrNotFound)
	e.wantErr("complete an unknown token", e.s.CompleteFeedback(e.ctx, c2d.LockToken{1}), c2d.ErrNotFound)
	e.ok("abandon b2", e.s.AbandonFeedback(e.ctx, b2.LockToken))
	if n, _ := e.s.PendingFeedback(e.ctx); n != 3 {
		t.Fatalf("PendingFeedback = %d; want 3", n)
	}
	x := e.take(10, "m2", "m3")

	// An expired batch lock gives the records to the next taker.
	e.clock.Advance(20 * time.Second)
	y := e.take(10, "m2", "m3", "m4")
	e.wantErr("complete an expired batch", e.s.CompleteFeedback(e.ctx, x.LockToken), c2d.ErrLockLost)
	e.wantErr("abandon an expired batch", e.s.AbandonFeedback(e.ctx, b3.LockToken), c2d.ErrLockLost)
	e.ok("complete y", e.s.CompleteFeedback(e.ctx, y.LockToken))
	e.take(10)

	// Settling an expired batch nobody retook releases it too.
	e.produceSuccess("dev", "m5")
	z := e.take(10, "m5")
	e.clock.Advance(20 * time.Second)
	e.wantErr("complete expired z", e.s.CompleteFeedback(e.ctx, z.LockToken), c2d.ErrLockLost)
	e.take(10, "m5")
}

func testFeedbackExpiry(t *testing.T, open Opener) {
	t.Run("TTL", func(t *testing.T) {
		e := newEnv(t, open, c2d.Config{FeedbackTTL: time.Minute})
		e.produceSuccess("dev", "old")
		e.clock.Advance(30 * time.Second)
		e.produceSuccess("dev", "new")
		e.clock.Advance(30*time.Second - time.Millisecond)
		if n, _ := e.s.PendingFeedback(e.ctx); n != 2 {
			t.Fatalf("PendingFeedback = %d; want 2", n)
		}
		e.clock.Advance(time.Millisecond)
		if n, _ := e.s.PendingFeedback(e.ctx); n != 1 {
			t.Fatalf("PendingFeedback = %d; want 1 after old's TTL", n)
		}
		e.sweep()
		e.take(10, "new")
	})
	t.Run("TTLWhileLocked", func(t *testing.T) {
		e := newEnv(t, open, c2d.Config{FeedbackTTL: time.Minute, FeedbackLockDuration: 2 * time.Minute})
		e.produceSuccess("dev", "r")
		e.take(10, "r")
		e.clock.Advance(time.Minute)
		e.sweep()
		if n, _ := e.s.PendingFeedback(e.ctx); n != 0 {
			t.Fatalf("PendingFeedback = %d; want 0", n)
		}
	})
	t.Run("MaxDeliveryCount", func(t *testing.T) {
		e := newEnv(t, open, c2d.Config{FeedbackMaxDeliveryCount: 2})
		e.produceSuccess("dev", "r", "s")
		b := e.take(1, "r")
		e.ok("abandon 1", e.s.AbandonFeedback(e.ctx, b.LockToken))
		b = e.take(1, "r")
		e.ok("abandon 2", e.s.AbandonFeedback(e.ctx, b.LockToken))
		e.take(10, "s")
		if n, _ := e.s.PendingFeedback(e.ctx); n != 1 {
			t.Fatalf("PendingFeedback = %d; want 1", n)
		}
	})
}

func testWatch(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{LockDuration: 10 * time.Second})
	ch, stop := e.s.Watch("dev")
	if signalled(ch) {
		t.Fatal("watch on an empty queue is signalled")
	}
	other, stopOther := e.s.Watch("other")
	defer stopOther()
	e.enqueue("dev", c2d.NewMessage{MessageID: "1"})
	waitSignal(t, ch, "enqueue")
	if signalled(other) {
		t.Fatal("another queue's watch was signalled")
	}
	m := e.lock("dev")
	e.ok("abandon", e.s.Abandon(e.ctx, "dev", m.LockToken))
	waitSignal(t, ch, "abandon")
	e.lock("dev")
	e.clock.Advance(10 * time.Second)
	e.sweep()
	waitSignal(t, ch, "lock expiry")
	stop()
	stop() // idempotent

	// A new watch starts signalled when a message is already available.
	ch2, stop2 := e.s.Watch("dev")
	defer stop2()
	waitSignal(t, ch2, "primed watch")

	fb, stopFb := e.s.WatchFeedback()
	defer stopFb()
	if signalled(fb) {
		t.Fatal("feedback watch signalled with no feedback")
	}
	e.produceSuccess("fbdev", "f1")
	e.enqueue("fbdev", c2d.NewMessage{MessageID: "f2", Ack: c2d.AckFull})
	waitSignal(t, fb, "feedback record")
	b := e.take(10, "f1")
	e.ok("abandon feedback", e.s.AbandonFeedback(e.ctx, b.LockToken))
	waitSignal(t, fb, "feedback abandon")
	fb2, stopFb2 := e.s.WatchFeedback()
	defer stopFb2()
	waitSignal(t, fb2, "primed feedback watch")
}

func testNext(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	got := make(chan c2d.Message, 1)
	errc := make(chan error, 1)
	go func() {
		m, err := c2d.Next(e.ctx, e.s, "dev")
		got <- m
		errc <- err
	}()
	e.enqueue("dev", c2d.NewMessage{MessageID: "wake"})
	select {
	case m := <-got:
		if err := <-errc; err != nil || m.MessageID != "wake" {
			t.Fatalf("Next = %q, %v", m.MessageID, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Next did not return after an enqueue")
	}
	ctx, cancel := context.WithCancel(e.ctx)
	go func() {
		_, err := c2d.Next(ctx, e.s, "dev")
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Next after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Next ignored its context")
	}
}

func testRestart(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{LockDuration: time.Minute})
	payload := bytes.Repeat([]byte("body"), 100)
	var seqs []uint64
	for i := 1; i <= 4; i++ {
		seqs = append(seqs, e.enqueue("a", c2d.NewMessage{
			DeviceID: "dev-a", GenerationID: "gen", MessageID: fmt.Sprint("a", i), Ack: c2d.AckFull,
			ExpiresAt: epoch.Add(time.Duration(i) * time.Hour), Body: append(payload, byte(i)),
		}))
	}
	held := e.lock("a") // a1 stays locked across the restart
	m2 := e.lock("a")
	e.ok("abandon a2", e.s.Abandon(e.ctx, "a", m2.LockToken))
	e.produceSuccess("b", "b1")
	e.enqueue("b", c2d.NewMessage{MessageID: "b2", Ack: c2d.AckNegative})
	e.ok("reject b2", e.s.Reject(e.ctx, "b", e.lock("b").LockToken))
	e.take(1, "b1") // feedback batch locks do not survive a restart

	e.restart()
	e.restart() // reopening twice changes nothing
	e.pending("a", c2d.Counts{Enqueued: 3, Locked: 1})
	e.pending("b", c2d.Counts{})
	for i, want := range []struct {
		n     int // message a<n>
		seq   uint64
		count uint32
	}{{2, seqs[1], 1}, {3, seqs[2], 0}, {4, seqs[3], 0}} {
		m := e.lock("a")
		n := want.n
		if m.Seq != want.seq || m.DeliveryCount != want.count || m.MessageID != fmt.Sprint("a", n) ||
			m.DeviceID != "dev-a" || m.GenerationID != "gen" || m.Ack != c2d.AckFull ||
			!m.EnqueuedAt.Equal(epoch) || !m.ExpiresAt.Equal(epoch.Add(time.Duration(n)*time.Hour)) ||
			!bytes.Equal(m.Body, append(payload, byte(n))) {
			t.Fatalf("lock %d after restart: %+v; want seq %d count %d", i, m, want.seq, want.count)
		}
	}
	e.noLock("a")
	e.ok("complete with the token from before the restart", e.s.Complete(e.ctx, "a", held.LockToken))
	e.wantFeedback("b1:Success", "b2:Rejected", "a1:Success")
	if seq := e.enqueue("a", c2d.NewMessage{}); seq <= seqs[3] {
		t.Fatalf("sequence %d after restart is not above %d", seq, seqs[3])
	}
}

func testRestartLockExpiry(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{LockDuration: time.Minute, MaxDeliveryCount: 5})
	e.enqueue("dev", c2d.NewMessage{MessageID: "x"})
	m := e.lock("dev")
	e.ok("abandon", e.s.Abandon(e.ctx, "dev", m.LockToken))
	m = e.lock("dev")
	e.restart()
	e.noLock("dev")
	e.clock.Advance(time.Minute)
	e.sweep()
	again := e.lock("dev")
	if again.Seq != m.Seq || again.DeliveryCount != 1 {
		t.Fatalf("after restart and lock expiry: seq %d count %d; want %d, 1", again.Seq, again.DeliveryCount, m.Seq)
	}
	e.wantErr("old token after restart and expiry", e.s.Complete(e.ctx, "dev", m.LockToken), c2d.ErrLockLost)
}

func testSequenceSurvivesEmptyRestart(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	var last uint64
	for i := 0; i < 3; i++ {
		seq := e.enqueue("dev", c2d.NewMessage{})
		if seq <= last {
			t.Fatalf("round %d: seq %d after %d", i, seq, last)
		}
		last = seq
		e.ok("complete", e.s.Complete(e.ctx, "dev", e.lock("dev").LockToken))
		e.restart() // the queue is empty and no feedback is pending
	}
}

func testConcurrent(t *testing.T, open Opener) {
	const (
		producers = 8
		queues    = 4
		perQueue  = 10 // per producer
	)
	e := newEnv(t, open, c2d.Config{MaxDepth: producers * perQueue})
	var wg sync.WaitGroup
	errs := make(chan error, producers*queues*perQueue)
	enqueued := make([][]uint64, queues)
	var mu sync.Mutex
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			last := make([]uint64, queues)
			for i := 0; i < perQueue; i++ {
				for q := 0; q < queues; q++ {
					seq, err := e.s.Enqueue(e.ctx, fmt.Sprint("q", q), c2d.NewMessage{MessageID: fmt.Sprint(p, "-", i), Ack: c2d.AckPositive})
					if err != nil {
						errs <- err
						return
					}
					if seq <= last[q] {
						errs <- fmt.Errorf("producer %d queue %d: seq %d after %d", p, q, seq, last[q])
					}
					last[q] = seq
					mu.Lock()
					enqueued[q] = append(enqueued[q], seq)
					mu.Unlock()
				}
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Concurrent consumers of one queue never share a message.
	for q := 0; q < queues; q++ {
		qid := fmt.Sprint("q", q)
		var got []uint64
		var gotMu sync.Mutex
		cerrs := make(chan error, 4)
		for c := 0; c < 4; c++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					m, ok, err := e.s.Lock(e.ctx, qid)
					if err != nil {
						cerrs <- err
						return
					}
					if !ok {
						return
					}
					if err := e.s.Complete(e.ctx, qid, m.LockToken); err != nil {
						cerrs <- err
						return
					}
					gotMu.Lock()
					got = append(got, m.Seq)
					gotMu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(cerrs)
		for err := range cerrs {
			t.Fatal(err)
		}
		slices.Sort(got)
		want := slices.Clone(enqueued[q])
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("queue %d: consumed %d messages %v; want %d", q, len(got), got, len(want))
		}
	}
	if n, err := e.s.PendingFeedback(e.ctx); err != nil || n != producers*queues*perQueue {
		t.Fatalf("PendingFeedback = %d, %v; want %d", n, err, producers*queues*perQueue)
	}
}

func testInvalidInput(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{MaxMessageBytes: 1024})
	long := string(bytes.Repeat([]byte{'x'}, c2d.MaxIDBytes+1))
	tok := c2d.LockToken{9}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"enqueue empty queue", func() error { _, err := e.s.Enqueue(e.ctx, "", c2d.NewMessage{}); return err }, c2d.ErrInvalid},
		{"enqueue long queue", func() error { _, err := e.s.Enqueue(e.ctx, long, c2d.NewMessage{}); return err }, c2d.ErrInvalid},
		{"enqueue bad ack", func() error { _, err := e.s.Enqueue(e.ctx, "q", c2d.NewMessage{Ack: 9}); return err }, c2d.ErrInvalid},
		{"enqueue big body", func() error {
			_, err := e.s.Enqueue(e.ctx, "q", c2d.NewMessage{Body: make([]byte, 1025)})
			return err
		}, c2d.ErrInvalid},
		{"enqueue long message id", func() error { _, err := e.s.Enqueue(e.ctx, "q", c2d.NewMessage{MessageID: long}); return err }, c2d.ErrInvalid},
		{"lock empty queue id", func() error { _, _, err := e.s.Lock(e.ctx, ""); return err }, c2d.ErrInvalid},
		{"complete empty queue id", func() error { return e.s.Complete(e.ctx, "", tok) }, c2d.ErrInvalid},
		{"complete unknown token", func() error { return e.s.Complete(e.ctx, "q", tok) }, c2d.ErrNotFound},
		{"abandon zero token", func() error { return e.s.Abandon(e.ctx, "q", c2d.LockToken{}) }, c2d.ErrNotFound},
		{"reject unknown token", func() error { return e.s.Reject(e.ctx, "q", tok) }, c2d.ErrNotFound},
		{"purge empty queue id", func() error { _, err := e.s.Purge(e.ctx, ""); return err }, c2d.ErrInvalid},
		{"delete empty queue id", func() error { return e.s.DeleteQueue(e.ctx, "") }, c2d.ErrInvalid},
		{"pending empty queue id", func() error { _, err := e.s.Pending(e.ctx, ""); return err }, c2d.ErrInvalid},
		{"take zero", func() error { _, _, err := e.s.TakeFeedback(e.ctx, 0); return err }, c2d.ErrInvalid},
		{"take negative", func() error { _, _, err := e.s.TakeFeedback(e.ctx, -1); return err }, c2d.ErrInvalid},
		{"complete feedback unknown", func() error { return e.s.CompleteFeedback(e.ctx, tok) }, c2d.ErrNotFound},
		{"abandon feedback unknown", func() error { return e.s.AbandonFeedback(e.ctx, tok) }, c2d.ErrNotFound},
	} {
		e.wantErr(tc.name, tc.call(), tc.want)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if _, err := e.s.Enqueue(ctx, "q", c2d.NewMessage{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("enqueue with a cancelled context: %v", err)
	}
	e.pending("q", c2d.Counts{})
	if n, err := e.s.PendingFeedback(e.ctx); err != nil || n != 0 {
		t.Fatalf("PendingFeedback = %d, %v; want 0", n, err)
	}
	// The largest valid message is accepted.
	e.enqueue("q", c2d.NewMessage{Body: make([]byte, 1024)})
}

func testClosed(t *testing.T, open Opener) {
	e := newEnv(t, open, c2d.Config{})
	e.enqueue("q", c2d.NewMessage{})
	e.ok("Close", e.s.Close())
	e.ok("second Close", e.s.Close())
	_, err := e.s.Enqueue(e.ctx, "q", c2d.NewMessage{})
	e.wantErr("enqueue after close", err, c2d.ErrClosed)
	_, _, err = e.s.Lock(e.ctx, "q")
	e.wantErr("lock after close", err, c2d.ErrClosed)
	_, _, err = e.s.TakeFeedback(e.ctx, 1)
	e.wantErr("take after close", err, c2d.ErrClosed)
	e.wantErr("sweep after close", e.s.Sweep(e.ctx), c2d.ErrClosed)
	// Reopening after an explicit close still works.
	e.restart()
	e.pending("q", c2d.Counts{Enqueued: 1})
}
