package c2d_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/pebbleutil"
	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/testutil"
	"amqphub/store/c2d"
	"amqphub/store/c2d/c2dtest"
)

// TestRefusesWritesWithoutSpace runs every writing operation while the
// guard reports too little free space: each fails with ErrNoSpace, nothing
// is committed, reads go on, the refusal is logged once; once space returns
// the same store (and the same committer) takes writes again.
func TestRefusesWritesWithoutSpace(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	disk := pebbleutiltest.NewDisk()
	logs := &testutil.LockedBuffer{}
	clock := c2dtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	open := func() *c2d.PebbleStore {
		t.Helper()
		s, err := c2d.OpenPebble("c2d", c2d.PebbleOptions{
			Config:    c2d.Config{Now: clock.Now, ManualSweep: true, Logger: slog.New(slog.NewTextHandler(logs, nil))},
			FS:        fs,
			DiskGuard: disk.Options(),
		})
		if err != nil {
			t.Fatalf("OpenPebble: %v", err)
		}
		return s
	}
	s := open()
	defer func() { s.Close() }()

	// A feedback batch handed out, a locked message and an enqueued one.
	if _, err := s.Enqueue(ctx, "q", c2d.NewMessage{MessageID: "m0", GenerationID: "g", Ack: c2d.AckFull}); err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "q", mustLock(t, s, "q").LockToken); err != nil {
		t.Fatal(err)
	}
	fb, ok, err := s.TakeFeedback(ctx, 10)
	if err != nil || !ok {
		t.Fatalf("TakeFeedback: %v %v", ok, err)
	}
	for _, id := range []string{"m1", "m2"} {
		if _, err := s.Enqueue(ctx, "q", c2d.NewMessage{MessageID: id, GenerationID: "g", Ack: c2d.AckFull, ExpiresAt: clock.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	m1 := mustLock(t, s, "q")
	// Lock does not wait for its commit; a write that waits, later in the
	// committer's order, does.
	if _, err := s.Enqueue(ctx, "other", c2d.NewMessage{MessageID: "flush"}); err != nil {
		t.Fatal(err)
	}

	writes := []struct {
		name string
		do   func() error
	}{
		{"enqueue", func() error { _, err := s.Enqueue(ctx, "q", c2d.NewMessage{MessageID: "m3"}); return err }},
		{"lock", func() error { _, _, err := s.Lock(ctx, "q"); return err }},
		{"complete", func() error { return s.Complete(ctx, "q", m1.LockToken) }},
		{"abandon", func() error { return s.Abandon(ctx, "q", m1.LockToken) }},
		{"reject", func() error { return s.Reject(ctx, "q", m1.LockToken) }},
		{"release", func() error { return s.Release(ctx, "q", m1.LockToken) }},
		{"purge", func() error { _, err := s.Purge(ctx, "q"); return err }},
		{"drop generations", func() error { _, err := s.DropGenerations(ctx, "q", ""); return err }},
		{"delete queue", func() error { return s.DeleteQueue(ctx, "q") }},
		{"take feedback", func() error { _, _, err := s.TakeFeedback(ctx, 10); return err }},
		{"complete feedback", func() error { return s.CompleteFeedback(ctx, fb.LockToken) }},
		{"abandon feedback", func() error { return s.AbandonFeedback(ctx, fb.LockToken) }},
		{"sweep", func() error { return s.Sweep(ctx) }},
	}
	disk.Full()
	commits := s.Commits()
	clock.Advance(2 * time.Hour) // everything is due to expire: Sweep would write
	for _, w := range writes {
		if err := w.do(); !errors.Is(err, pebbleutil.ErrNoSpace) {
			t.Errorf("%s without space: %v, want ErrNoSpace", w.name, err)
		}
	}
	if got := s.Commits(); got != commits {
		t.Errorf("%d commits while refusing writes", got-commits)
	}
	if n := strings.Count(logs.String(), "refusing writes"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, logs)
	}
	clock.Advance(-2 * time.Hour)
	// Reads go on and see the state as it was.
	if c, err := s.Pending(ctx, "q"); err != nil || c != (c2d.Counts{Enqueued: 1, Locked: 1}) {
		t.Errorf("Pending = %+v, %v; want 1 enqueued, 1 locked", c, err)
	}
	if n, err := s.PendingFeedback(ctx); err != nil || n != 1 {
		t.Errorf("PendingFeedback = %d, %v; want 1", n, err)
	}
	if g, err := s.Generations(ctx); err != nil || len(g["q"]) != 1 {
		t.Errorf("Generations = %v, %v", g, err)
	}

	// Space returns: the same store takes every kind of write again.
	disk.Freed()
	if err := s.Complete(ctx, "q", m1.LockToken); err != nil {
		t.Fatalf("Complete after space returned: %v", err)
	}
	if err := s.CompleteFeedback(ctx, fb.LockToken); err != nil {
		t.Fatalf("CompleteFeedback after space returned: %v", err)
	}
	if _, err := s.Enqueue(ctx, "q", c2d.NewMessage{MessageID: "m3"}); err != nil {
		t.Fatalf("Enqueue after space returned: %v", err)
	}
	if m := mustLock(t, s, "q"); m.MessageID != "m2" {
		t.Fatalf("locked %q, want m2", m.MessageID)
	}
	if err := s.Sweep(ctx); err != nil {
		t.Fatalf("Sweep after space returned: %v", err)
	}
	if !strings.Contains(logs.String(), "accepting writes again") {
		t.Errorf("recovery not logged:\n%s", logs)
	}
	// Memory and disk agree: a reopened store holds the same.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	if c, err := s.Pending(ctx, "q"); err != nil || c != (c2d.Counts{Enqueued: 1, Locked: 1}) {
		t.Errorf("Pending after reopen = %+v, %v; want m3 enqueued, m2 locked", c, err)
	}
	if n, err := s.PendingFeedback(ctx); err != nil || n != 1 {
		t.Errorf("PendingFeedback after reopen = %d, %v; want m1's Success", n, err)
	}
}

// TestSweeperWaitsForSpace: an expiry due while the disk is full is
// applied by the background sweeper once space returns; it does not give
// up.
func TestSweeperWaitsForSpace(t *testing.T) {
	ctx := context.Background()
	disk := pebbleutiltest.NewDisk()
	logs := &testutil.LockedBuffer{}
	s, err := c2d.OpenPebble("db", c2d.PebbleOptions{
		InMemory:  true,
		DiskGuard: disk.Options(),
		Config:    c2d.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Enqueue(ctx, "dev", c2d.NewMessage{MessageID: "short", Ack: c2d.AckFull, ExpiresAt: time.Now().Add(50 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	disk.Full()
	// Only the sweeper writes now: its refused sweep is what gets logged.
	waitFor(t, "the sweeper's refusal", func() bool { return strings.Contains(logs.String(), "refusing writes") })
	if n, err := s.PendingFeedback(ctx); err != nil || n != 0 {
		t.Fatalf("PendingFeedback while full = %d, %v; want 0 (the sweep cannot write)", n, err)
	}
	disk.Freed()
	waitFor(t, "the expiry after space returned", func() bool {
		n, err := s.PendingFeedback(ctx)
		return err == nil && n == 1
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
