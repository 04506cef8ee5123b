package c2d_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"amqphub/store/c2d"
	"amqphub/store/c2d/c2dtest"
)

// opener runs the conformance suite on a Pebble store; mkFS gives the file
// system and directory for one test.
func opener(mkFS func(t *testing.T) (vfs.FS, string)) c2dtest.Opener {
	return func(t *testing.T, cfg c2d.Config) (c2d.Store, func() c2d.Store) {
		fs, dir := mkFS(t)
		open := func() *c2d.PebbleStore {
			t.Helper()
			s, err := c2d.OpenPebble(dir, c2d.PebbleOptions{Config: cfg, FS: fs})
			if err != nil {
				t.Fatalf("OpenPebble: %v", err)
			}
			return s
		}
		cur := open()
		t.Cleanup(func() {
			if err := cur.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return cur, func() c2d.Store {
			t.Helper()
			if err := cur.Close(); err != nil {
				t.Fatalf("Close before reopen: %v", err)
			}
			cur = open()
			return cur
		}
	}
}

func TestConformanceMem(t *testing.T) {
	c2dtest.Run(t, opener(func(t *testing.T) (vfs.FS, string) { return vfs.NewMem(), "c2d" }))
}

func TestConformanceDisk(t *testing.T) {
	c2dtest.Run(t, opener(func(t *testing.T) (vfs.FS, string) { return vfs.Default, t.TempDir() }))
}

// TestCrashDurability drops everything not fsynced, as a power cut would,
// and checks that what the store acknowledged is there, state change and
// feedback together. The NoSync case shows the check can fail.
func TestCrashDurability(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noSync   bool
		survives bool
	}{
		{"sync", false, true},
		{"nosync", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			fs := vfs.NewStrictMem()
			clock := c2dtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
			cfg := c2d.Config{Now: clock.Now, ManualSweep: true}
			open := func(noSync bool) *c2d.PebbleStore {
				// The root: creating a subdirectory is not synced on a
				// strict in-memory file system.
				s, err := c2d.OpenPebble("", c2d.PebbleOptions{Config: cfg, FS: fs, NoSync: noSync})
				if err != nil {
					t.Fatalf("OpenPebble: %v", err)
				}
				return s
			}
			// Set up a baseline that is durable in both cases.
			s := open(false)
			if _, err := s.Enqueue(ctx, "dev", c2d.NewMessage{MessageID: "done", Ack: c2d.AckFull}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(tc.noSync)
			m, ok, err := s.Lock(ctx, "dev")
			if err != nil || !ok {
				t.Fatalf("Lock: %v %v", ok, err)
			}
			if err := s.Complete(ctx, "dev", m.LockToken); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Enqueue(ctx, "dev", c2d.NewMessage{MessageID: "new"}); err != nil {
				t.Fatal(err)
			}
			// Crash: nothing from here on reaches the disk.
			fs.SetIgnoreSyncs(true)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			fs.ResetToSyncedState()
			fs.SetIgnoreSyncs(false)

			s = open(false)
			defer s.Close()
			c, err := s.Pending(ctx, "dev")
			if err != nil {
				t.Fatal(err)
			}
			fb, err := s.PendingFeedback(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := c == c2d.Counts{Enqueued: 1} && fb == 1
			lost := c == c2d.Counts{Enqueued: 1} && fb == 0 // original message back, nothing after it
			switch {
			case tc.survives && !got:
				t.Fatalf("after crash: pending %+v, feedback %d; want the new message and the Success record", c, fb)
			case !tc.survives && !lost:
				t.Fatalf("after crash without fsync: pending %+v, feedback %d; want the pre-crash state", c, fb)
			}
			m, ok, err = s.Lock(ctx, "dev")
			if err != nil || !ok {
				t.Fatalf("Lock after crash: %v %v", ok, err)
			}
			want := "new"
			if !tc.survives {
				want = "done"
			}
			if m.MessageID != want {
				t.Fatalf("after crash the queue holds %q; want %q", m.MessageID, want)
			}
		})
	}
}

// TestOpenCorrupt writes malformed records and expects a clear error, not a
// crash and not silently dropped data.
func TestOpenCorrupt(t *testing.T) {
	goodMsgKey := []byte("m\x03dev\x00\x00\x00\x00\x00\x00\x00\x01")
	for _, tc := range []struct {
		name string
		k, v []byte
	}{
		{"unknown prefix", []byte("zzz"), []byte("x")},
		{"short high-water", []byte("g"), []byte{1, 2}},
		{"short queue key", []byte("m\x03de"), []byte{1}},
		{"queue key length too big", []byte("m\xff\xff\xff\xff\x0fdev\x00\x00\x00\x00\x00\x00\x00\x01"), []byte{1}},
		{"message format", goodMsgKey, []byte{9, 0}},
		{"message truncated", goodMsgKey, []byte{1, 0, 0, 0}},
		{"message bad ack", goodMsgKey, append([]byte{1, 7}, make([]byte, 19)...)},
		{"feedback key", []byte("f\x01"), []byte{1}},
		{"feedback truncated", []byte("f\x00\x00\x00\x00\x00\x00\x00\x05"), []byte{1, 0, 0}},
		{"feedback bad status", []byte("f\x00\x00\x00\x00\x00\x00\x00\x05"), append([]byte{1, 9}, make([]byte, 20)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			db, err := pebble.Open("db", &pebble.Options{FS: fs})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Set(tc.k, tc.v, pebble.Sync); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			s, err := c2d.OpenPebble("db", c2d.PebbleOptions{FS: fs, Config: c2d.Config{ManualSweep: true}})
			if err == nil {
				s.Close()
				t.Fatal("OpenPebble accepted a corrupt record")
			}
			if !strings.Contains(err.Error(), "corrupt record") {
				t.Fatalf("error %q does not say what is wrong", err)
			}
		})
	}
}

// TestOpenDropsOrphanState checks that a delivery state without its message
// (impossible through the API) is cleaned up rather than fatal.
func TestOpenDropsOrphanState(t *testing.T) {
	fs := vfs.NewMem()
	db, err := pebble.Open("db", &pebble.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	state := append([]byte{1}, make([]byte, 28)...)
	if err := db.Set([]byte("s\x03dev\x00\x00\x00\x00\x00\x00\x00\x01"), state, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		s, err := c2d.OpenPebble("db", c2d.PebbleOptions{FS: fs, Config: c2d.Config{ManualSweep: true, Logger: quiet}})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if c, err := s.Pending(context.Background(), "dev"); err != nil || c != (c2d.Counts{}) {
			t.Fatalf("Pending = %+v, %v", c, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackgroundSweeper runs on the real clock with the store's own timer:
// no Sweep call, yet expiries happen and watchers are told.
func TestBackgroundSweeper(t *testing.T) {
	ctx := context.Background()
	s, err := c2d.OpenPebble("db", c2d.PebbleOptions{InMemory: true, Config: c2d.Config{LockDuration: 20 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Enqueue(ctx, "dev", c2d.NewMessage{MessageID: "short", Ack: c2d.AckFull, ExpiresAt: time.Now().Add(20 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enqueue(ctx, "lk", c2d.NewMessage{MessageID: "locked"}); err != nil {
		t.Fatal(err)
	}
	ch, stop := s.Watch("lk")
	defer stop()
	<-ch // primed
	if _, ok, err := s.Lock(ctx, "lk"); err != nil || !ok {
		t.Fatalf("Lock: %v %v", ok, err)
	}
	fb, stopFb := s.WatchFeedback()
	defer stopFb()
	deadline := time.After(10 * time.Second)
	for gotLock, gotFb := false, false; !gotLock || !gotFb; {
		select {
		case <-ch:
			gotLock = true
		case <-fb:
			gotFb = true
		case <-deadline:
			t.Fatalf("background sweeper: lock expiry signalled %v, expiry feedback signalled %v", gotLock, gotFb)
		}
	}
	b, ok, err := s.TakeFeedback(ctx, 10)
	if err != nil || !ok || len(b.Records) != 1 || b.Records[0].Status != c2d.StatusExpired {
		t.Fatalf("TakeFeedback = %+v %v %v; want one Expired record", b, ok, err)
	}
}

func TestOpenInvalidConfig(t *testing.T) {
	for _, cfg := range []c2d.Config{{MaxDepth: -1}, {LockDuration: -time.Second}, {FeedbackTTL: -1}} {
		if s, err := c2d.OpenPebble("db", c2d.PebbleOptions{InMemory: true, Config: cfg}); !errors.Is(err, c2d.ErrInvalid) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("OpenPebble(%+v) = %v; want ErrInvalid", cfg, err)
		}
	}
}
