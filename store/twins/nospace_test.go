package twins_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/pebbleutil"
	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/testutil"
	"amqphub/store/twins"
)

// TestPebbleRefusesWritesWithoutSpace: while the guard reports too little
// free space every write is refused with ErrNoSpace and nothing reaches the
// database (not even after a reopen) nor the desired-change subscribers;
// reads go on; once space returns the same store accepts writes again.
func TestPebbleRefusesWritesWithoutSpace(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	disk := pebbleutiltest.NewDisk()
	logs := &testutil.LockedBuffer{}
	open := func() *twins.PebbleStore {
		s, err := twins.OpenPebble("twins", twins.PebbleOptions{
			FS:        fs,
			Logger:    slog.New(slog.NewTextHandler(logs, nil)),
			DiskGuard: disk.Options(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	defer func() { s.Close() }()
	var changes atomic.Int32
	s.SubscribeDesired(func(twins.DesiredChange) { changes.Add(1) })

	dev := twins.ID{DeviceID: "d1"}
	mod := twins.ID{DeviceID: "d1", ModuleID: "m1"}
	const gen = "g1"
	before, err := s.Update(ctx, dev, gen, twins.Update{Desired: map[string]any{"a": 1.0}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PatchReported(ctx, mod, gen, map[string]any{"r": "x"}); err != nil {
		t.Fatal(err)
	}
	changes.Store(0)

	writes := []struct {
		name string
		do   func() error
	}{
		{"patch reported", func() error {
			_, err := s.PatchReported(ctx, dev, gen, map[string]any{"r": 2.0})
			return err
		}},
		{"update desired", func() error {
			_, err := s.Update(ctx, dev, gen, twins.Update{Desired: map[string]any{"a": 2.0}})
			return err
		}},
		{"replace", func() error {
			_, err := s.Update(ctx, dev, gen, twins.Update{Replace: true, Tags: map[string]any{"t": 1.0}})
			return err
		}},
		{"delete", func() error { return s.Delete(ctx, mod) }},
		{"delete device", func() error { return s.DeleteDevice(ctx, "d1") }},
	}
	disk.Full()
	for _, w := range writes {
		if err := w.do(); !errors.Is(err, pebbleutil.ErrNoSpace) {
			t.Errorf("%s without space: %v, want ErrNoSpace", w.name, err)
		}
	}
	if n := changes.Load(); n != 0 {
		t.Errorf("%d desired changes announced for refused writes", n)
	}
	if n := strings.Count(logs.String(), "refusing writes"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, logs)
	}
	// Reads work, and nothing was written, even on disk.
	check := func(s *twins.PebbleStore, when string) {
		t.Helper()
		got, err := s.Get(ctx, dev, gen)
		if err != nil || got.Version != before.Version || fmt.Sprint(got.Desired.Values["a"]) != "1" || len(got.Reported.Values) != 0 {
			t.Fatalf("%s: twin %+v, %v; want it unchanged", when, got, err)
		}
		m, err := s.Get(ctx, mod, gen)
		if err != nil || fmt.Sprint(m.Reported.Values["r"]) != "x" {
			t.Fatalf("%s: module twin %+v, %v; want it kept", when, m, err)
		}
	}
	check(s, "after refused writes")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open() // reads need no space: opening with a full disk works
	check(s, "after reopening")
	s.SubscribeDesired(func(twins.DesiredChange) { changes.Add(1) })

	disk.Freed()
	for _, w := range writes {
		if err := w.do(); err != nil {
			t.Errorf("%s after space returned: %v", w.name, err)
		}
	}
	if changes.Load() == 0 {
		t.Error("no desired change announced after space returned")
	}
	if got, err := s.Get(ctx, dev, gen); err != nil || len(got.Tags) != 0 || len(got.Reported.Values) != 0 {
		// DeleteDevice ran last: the twin is new again.
		t.Fatalf("twin after delete: %+v, %v", got, err)
	}
}
