package c2d

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGroupCommit holds the first commit inside the committer until 20 more
// enqueues have queued up behind it, then checks they share one commit.
func TestGroupCommit(t *testing.T) {
	const waiting = 20
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	s, err := OpenPebble("db", PebbleOptions{
		InMemory: true,
		Config:   Config{ManualSweep: true},
		testHookBeforeCommit: func() {
			once.Do(func() {
				close(entered)
				<-release
			})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	errs := make(chan error, waiting+1)
	go func() {
		_, err := s.Enqueue(ctx, "first", NewMessage{})
		errs <- err
	}()
	<-entered
	for i := 0; i < waiting; i++ {
		go func() {
			_, err := s.Enqueue(ctx, fmt.Sprint("dev", i), NewMessage{})
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := s.cur.ops
		s.mu.Unlock()
		if n == waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d enqueues gathered behind the held commit", n)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for i := 0; i < waiting+1; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Commits(); got != 2 {
		t.Fatalf("%d enqueues took %d commits; want 2 (one held, one group)", waiting+1, got)
	}
}

// TestTimerHeap checks that removal and rescheduling keep the heap ordered
// and its indices right; stale entries would make the sweeper misfire.
func TestTimerHeap(t *testing.T) {
	base := time.Unix(1000, 0)
	var h timerHeap
	ts := make([]*timer, 10)
	for i := range ts {
		ts[i] = &timer{idx: -1}
		h.schedule(ts[i], base.Add(time.Duration((i*7)%10)*time.Second))
	}
	h.unschedule(ts[3])
	h.unschedule(ts[3]) // no-op once removed
	h.schedule(ts[5], base.Add(-time.Second))
	for i, tm := range h {
		if tm.idx != i {
			t.Fatalf("timer at %d has idx %d", i, tm.idx)
		}
	}
	var got []time.Time
	for tm := h.popDue(base.Add(time.Hour)); tm != nil; tm = h.popDue(base.Add(time.Hour)) {
		if tm == ts[3] {
			t.Fatal("unscheduled timer fired")
		}
		if tm.idx != -1 {
			t.Fatalf("popped timer keeps idx %d", tm.idx)
		}
		got = append(got, tm.at)
	}
	if len(got) != 9 || !got[0].Equal(base.Add(-time.Second)) {
		t.Fatalf("popped %v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Before(got[i-1]) {
			t.Fatalf("out of order: %v", got)
		}
	}
	if h.popDue(base.Add(time.Hour)) != nil {
		t.Fatal("empty heap popped")
	}
}

func TestCodecRoundTrip(t *testing.T) {
	now := time.Date(2030, 5, 6, 7, 8, 9, 123456789, time.UTC)
	for _, qid := range []string{"d", "dev/modules/m", string(make([]byte, 300))} {
		for _, seq := range []uint64{0, 1, 1 << 63} {
			k := queueKey(prefixMessage, qid, seq)
			gq, gs, err := parseQueueKey(k)
			if err != nil || gq != qid || gs != seq {
				t.Fatalf("parseQueueKey(queueKey(%q, %d)) = %q, %d, %v", qid, seq, gq, gs, err)
			}
		}
	}
	h := msgHeader{ack: AckFull, enqueuedAt: now, expiresAt: now.Add(time.Hour), deviceID: "dév", generationID: "g", messageID: ""}
	gh, body, err := decodeMessage(encodeMessage(&h, []byte("body")))
	if err != nil || gh != h || string(body) != "body" {
		t.Fatalf("message round trip: %+v %q %v", gh, body, err)
	}
	st := msgState{token: LockToken{1, 2, 3}, lockedUntil: now, deliveryCount: 7}
	if got, err := decodeState(encodeState(&st)); err != nil || got != st {
		t.Fatalf("state round trip: %+v %v", got, err)
	}
	zero := msgState{deliveryCount: 1}
	if got, err := decodeState(encodeState(&zero)); err != nil || got != zero {
		t.Fatalf("zero-time state round trip: %+v %v", got, err)
	}
	f := storedFeedback{rec: FeedbackRecord{OriginalMessageID: "o", DeviceID: "d", DeviceGenerationID: "g", Status: StatusPurged, EnqueuedTime: now}, queueID: "q", expiresAt: now}
	if got, err := decodeFeedback(encodeFeedback(&f)); err != nil || got != f {
		t.Fatalf("feedback round trip: %+v %v", got, err)
	}
	// Every truncation of a valid value is rejected, never a panic.
	for _, v := range [][]byte{encodeState(&st), encodeFeedback(&f)} {
		for n := 0; n < len(v); n++ {
			if _, err := decodeState(v[:n]); err == nil && len(v) == 29 {
				t.Fatalf("truncated state of %d bytes accepted", n)
			}
			if _, err := decodeFeedback(v[:n]); err == nil && len(v) != 29 {
				t.Fatalf("truncated feedback of %d bytes accepted", n)
			}
		}
	}
	mv := encodeMessage(&h, nil)
	for n := 0; n < len(mv); n++ {
		if _, _, err := decodeMessage(mv[:n]); err == nil {
			t.Fatalf("truncated message header of %d bytes accepted", n)
		}
	}
}

// TestNothingVisibleBeforeCommit holds a commit and checks that neither the
// message it enqueues nor the feedback it creates can be handed out before
// it is durable: a crash at that point would otherwise deliver something
// the store then forgets.
func TestNothingVisibleBeforeCommit(t *testing.T) {
	var holding atomic.Bool
	entered := make(chan struct{})
	release := make(chan struct{})
	stop := make(chan struct{})
	s, err := OpenPebble("db", PebbleOptions{
		InMemory: true,
		Config:   Config{ManualSweep: true},
		testHookBeforeCommit: func() {
			if !holding.Load() {
				return
			}
			select {
			case entered <- struct{}{}:
			case <-stop:
				return
			}
			select {
			case <-release:
			case <-stop:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	defer close(stop) // runs first: a failing test never leaves the committer held
	ctx := context.Background()
	watch, stopWatch := s.Watch("dev")
	defer stopWatch()
	fbWatch, stopFb := s.WatchFeedback()
	defer stopFb()

	holding.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := s.Enqueue(ctx, "dev", NewMessage{Ack: AckFull})
		done <- err
	}()
	recv(t, entered, "the enqueue's commit")
	if _, ok, err := s.Lock(ctx, "dev"); ok || err != nil {
		t.Fatalf("Lock during the enqueue's commit = %v, %v; want nothing", ok, err)
	}
	if signalledNow(watch) {
		t.Fatal("watch signalled before the enqueue was durable")
	}
	holding.Store(false)
	release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recv(t, watch, "watch after the enqueue's commit")
	m, ok, err := s.Lock(ctx, "dev")
	if err != nil || !ok {
		t.Fatalf("Lock: %v %v", ok, err)
	}

	holding.Store(true)
	go func() { done <- s.Complete(ctx, "dev", m.LockToken) }()
	// The lock's own write may be committed on its own first; skip to the
	// commit that carries the completion.
	for {
		recv(t, entered, "the completion's commit")
		s.mu.Lock()
		pending := len(s.fb)
		s.mu.Unlock()
		if pending > 0 {
			break
		}
		release <- struct{}{}
	}
	if _, ok, err := s.TakeFeedback(ctx, 10); ok || err != nil {
		t.Fatalf("TakeFeedback during the completion's commit = %v, %v; want nothing", ok, err)
	}
	if signalledNow(fbWatch) {
		t.Fatal("feedback watch signalled before the record was durable")
	}
	holding.Store(false)
	release <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	recv(t, fbWatch, "feedback watch after the completion's commit")
	if b, ok, err := s.TakeFeedback(ctx, 10); !ok || err != nil || len(b.Records) != 1 {
		t.Fatalf("TakeFeedback after the commit = %+v, %v, %v", b, ok, err)
	}
}

func recv(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func signalledNow(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
