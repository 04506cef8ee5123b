package c2d_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"amqphub/store/c2d"
	"amqphub/store/c2d/c2dtest"
)

// openMaintain opens a Pebble store on an in-memory file system with a
// manual clock; reopen closes it and opens the same files again.
func openMaintain(t *testing.T) (s *c2d.PebbleStore, clock *c2dtest.Clock, reopen func() *c2d.PebbleStore) {
	t.Helper()
	fs := vfs.NewMem()
	clock = c2dtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	cfg := c2d.Config{Now: clock.Now, ManualSweep: true}
	open := func() *c2d.PebbleStore {
		t.Helper()
		st, err := c2d.OpenPebble("c2d", c2d.PebbleOptions{Config: cfg, FS: fs})
		if err != nil {
			t.Fatalf("OpenPebble: %v", err)
		}
		return st
	}
	s = open()
	t.Cleanup(func() { s.Close() })
	return s, clock, func() *c2d.PebbleStore {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		s = open()
		return s
	}
}

func mustLock(t *testing.T, s c2d.Store, q string) c2d.Message {
	t.Helper()
	m, ok, err := s.Lock(context.Background(), q)
	if err != nil || !ok {
		t.Fatalf("Lock(%q) = ok %v, err %v; want a message", q, ok, err)
	}
	return m
}

func TestRelease(t *testing.T) {
	ctx := context.Background()
	s, clock, reopen := openMaintain(t)
	if _, err := s.Enqueue(ctx, "d1", c2d.NewMessage{MessageID: "a", Ack: c2d.AckFull, Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	ch, stop := s.Watch("d1")
	defer stop()
	<-ch // the enqueued message
	m := mustLock(t, s, "d1")
	if err := s.Release(ctx, "d1", m.LockToken); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case <-ch:
	default:
		t.Fatal("Release did not signal the queue's watchers")
	}
	m2 := mustLock(t, s, "d1")
	if m2.Seq != m.Seq || m2.DeliveryCount != 0 {
		t.Fatalf("after Release: seq %d count %d; want seq %d count 0 (a release is not a delivery)", m2.Seq, m2.DeliveryCount, m.Seq)
	}
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"settle the released token", s.Complete(ctx, "d1", m.LockToken), c2d.ErrLockLost},
		{"release the released token", s.Release(ctx, "d1", m.LockToken), c2d.ErrLockLost},
		{"release an unknown token", s.Release(ctx, "d1", c2d.LockToken{1}), c2d.ErrNotFound},
		{"release on another queue", s.Release(ctx, "d2", m2.LockToken), c2d.ErrNotFound},
		{"release with an empty queue id", s.Release(ctx, "", m2.LockToken), c2d.ErrInvalid},
	} {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: err = %v; want %v", tc.name, tc.err, tc.want)
		}
	}
	// A lock that expired cannot be released.
	clock.Advance(c2d.DefaultLockDuration)
	if err := s.Release(ctx, "d1", m2.LockToken); !errors.Is(err, c2d.ErrLockLost) {
		t.Fatalf("Release after the lock expired: err = %v; want ErrLockLost", err)
	}
	// The release is durable: after a restart the message is available at
	// once, not locked until the lock would have expired.
	m3 := mustLock(t, s, "d1")
	if err := s.Release(ctx, "d1", m3.LockToken); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	m4 := mustLock(t, s, "d1")
	if m4.Seq != m.Seq || m4.DeliveryCount != 0 {
		t.Fatalf("after restart: seq %d count %d", m4.Seq, m4.DeliveryCount)
	}
	if err := s.Complete(ctx, "d1", m4.LockToken); err != nil {
		t.Fatal(err)
	}
	b, ok, err := s.TakeFeedback(ctx, 10)
	if err != nil || !ok || len(b.Records) != 1 || b.Records[0].Status != c2d.StatusSuccess {
		t.Fatalf("feedback = %+v, %v, %v; want one Success", b.Records, ok, err)
	}
}

func TestGenerationsAndDrop(t *testing.T) {
	ctx := context.Background()
	s, clock, reopen := openMaintain(t)
	enq := func(q, gen, id string, ack c2d.AckMode, ttl time.Duration) {
		t.Helper()
		nm := c2d.NewMessage{GenerationID: gen, MessageID: id, Ack: ack, Body: []byte(id)}
		if ttl > 0 {
			nm.ExpiresAt = clock.Now().Add(ttl)
		}
		if _, err := s.Enqueue(ctx, q, nm); err != nil {
			t.Fatal(err)
		}
	}
	enq("d1", "g1", "old-1", c2d.AckFull, 0)
	enq("d1", "g1", "old-2", c2d.AckNone, 0)
	enq("d2", "g7", "other", c2d.AckFull, 0)
	enq("d3", "g3", "short", c2d.AckNone, time.Second) // expires without feedback
	// old-1 completes: its Success feedback belongs to generation g1.
	old1 := mustLock(t, s, "d1")
	if err := s.Complete(ctx, "d1", old1.LockToken); err != nil {
		t.Fatal(err)
	}
	// old-2 is locked when its device is deleted.
	old2 := mustLock(t, s, "d1")
	// The device is created again (generation g2) and gets a message.
	enq("d1", "g2", "new-1", c2d.AckFull, 0)

	got, err := s.Generations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"d1": {"g1", "g2"}, "d2": {"g7"}, "d3": {"g3"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Generations = %v; want %v", got, want)
	}
	clock.Advance(2 * time.Second) // d3's message expired: no longer reported
	delete(want, "d3")
	if got, _ = s.Generations(ctx); !reflect.DeepEqual(got, want) {
		t.Fatalf("Generations after d3 expired = %v; want %v", got, want)
	}

	n, err := s.DropGenerations(ctx, "d1", "g2")
	if err != nil || n != 1 {
		t.Fatalf("DropGenerations(d1, keep g2) = %d, %v; want 1 message", n, err)
	}
	if err := s.Complete(ctx, "d1", old2.LockToken); !errors.Is(err, c2d.ErrLockLost) {
		t.Fatalf("settling a dropped message: err = %v; want ErrLockLost", err)
	}
	if got, _ = s.Generations(ctx); !reflect.DeepEqual(got, map[string][]string{"d1": {"g2"}, "d2": {"g7"}}) {
		t.Fatalf("Generations after the drop = %v", got)
	}
	if n, err := s.DropGenerations(ctx, "d2", ""); err != nil || n != 1 {
		t.Fatalf("DropGenerations(d2, all) = %d, %v; want 1", n, err)
	}
	if _, err := s.DropGenerations(ctx, "", ""); !errors.Is(err, c2d.ErrInvalid) {
		t.Fatalf("DropGenerations with an empty queue id: err = %v; want ErrInvalid", err)
	}

	// What is left survives a restart: new-1 only, and no feedback at all
	// (old-1's Success went with its generation; dropping makes none).
	s = reopen()
	if got, _ = s.Generations(ctx); !reflect.DeepEqual(got, map[string][]string{"d1": {"g2"}}) {
		t.Fatalf("Generations after restart = %v", got)
	}
	m := mustLock(t, s, "d1")
	if m.MessageID != "new-1" {
		t.Fatalf("after restart locked %q; want new-1", m.MessageID)
	}
	if _, ok, err := s.TakeFeedback(ctx, 10); ok || err != nil {
		t.Fatalf("TakeFeedback = ok %v, err %v; want no feedback", ok, err)
	}
}

func TestMaintainClosed(t *testing.T) {
	s, _, _ := openMaintain(t)
	s.Close()
	ctx := context.Background()
	if err := s.Release(ctx, "d1", c2d.LockToken{1}); !errors.Is(err, c2d.ErrClosed) {
		t.Errorf("Release after Close: %v", err)
	}
	if _, err := s.Generations(ctx); !errors.Is(err, c2d.ErrClosed) {
		t.Errorf("Generations after Close: %v", err)
	}
	if _, err := s.DropGenerations(ctx, "d1", ""); !errors.Is(err, c2d.ErrClosed) {
		t.Errorf("DropGenerations after Close: %v", err)
	}
	if _, err := s.AvailableFeedback(ctx); !errors.Is(err, c2d.ErrClosed) {
		t.Errorf("AvailableFeedback after Close: %v", err)
	}
}

// TestAvailableFeedback counts what TakeFeedback would hand out: not
// locked records, nor expired ones, but those of a batch whose lock
// expired.
func TestAvailableFeedback(t *testing.T) {
	ctx := context.Background()
	s, clock, _ := openMaintain(t)
	want := func(n int) {
		t.Helper()
		if got, err := s.AvailableFeedback(ctx); err != nil || got != n {
			t.Fatalf("AvailableFeedback = %d, %v; want %d", got, err, n)
		}
	}
	want(0)
	for i := range 3 {
		if _, err := s.Enqueue(ctx, "d1", c2d.NewMessage{MessageID: fmt.Sprint(i), Ack: c2d.AckFull, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		m := mustLock(t, s, "d1")
		if err := s.Complete(ctx, "d1", m.LockToken); err != nil {
			t.Fatal(err)
		}
	}
	want(3)
	b, ok, err := s.TakeFeedback(ctx, 2)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	want(1)
	if n, _ := s.PendingFeedback(ctx); n != 3 {
		t.Fatalf("PendingFeedback = %d; want 3 (locked records count there)", n)
	}
	clock.Advance(c2d.DefaultFeedbackLockDuration)
	want(3) // the batch's lock expired
	if err := s.CompleteFeedback(ctx, b.LockToken); !errors.Is(err, c2d.ErrLockLost) {
		t.Fatalf("CompleteFeedback after the lock expired: %v", err)
	}
	clock.Advance(c2d.DefaultFeedbackTTL)
	want(0) // expired
}
