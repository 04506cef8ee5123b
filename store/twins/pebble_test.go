package twins_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/vfs"

	"amqphub/store/twins"
	"amqphub/store/twins/twinstest"
)

func TestPebbleConformanceInMemory(t *testing.T) {
	twinstest.Run(t, func(t *testing.T, now func() time.Time) (twins.Store, func() twins.Store) {
		fs := vfs.NewMem()
		open := func() twins.Store {
			s, err := twins.OpenPebble("twins", twins.PebbleOptions{FS: fs, Now: now})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			return s
		}
		cur := open()
		t.Cleanup(func() { cur.Close() })
		return cur, func() twins.Store {
			if err := cur.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			cur = open()
			return cur
		}
	})
}

// TestPebbleConformanceOnDisk runs the suite on a real directory, so that
// reopen goes through the files an fsync left behind.
func TestPebbleConformanceOnDisk(t *testing.T) {
	twinstest.Run(t, func(t *testing.T, now func() time.Time) (twins.Store, func() twins.Store) {
		dir := filepath.Join(t.TempDir(), "twins")
		open := func() twins.Store {
			s, err := twins.OpenPebble(dir, twins.PebbleOptions{Now: now})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			return s
		}
		cur := open()
		t.Cleanup(func() { cur.Close() })
		return cur, func() twins.Store {
			if err := cur.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			cur = open()
			return cur
		}
	})
}

// TestPebbleCrashDurability drops unsynced file data (as a power loss
// would): acknowledged writes survive with fsync, and the NoSync variant
// shows that the check can tell the difference.
func TestPebbleCrashDurability(t *testing.T) {
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
			open := func(noSync bool) *twins.PebbleStore {
				// The root directory: creating a subdirectory is not
				// synced on a strict in-memory file system.
				s, err := twins.OpenPebble("", twins.PebbleOptions{FS: fs, NoSync: noSync})
				if err != nil {
					t.Fatalf("OpenPebble: %v", err)
				}
				return s
			}
			id := twins.ID{DeviceID: "crash"}
			s := open(false)
			if _, err := s.PatchReported(ctx, id, "g", map[string]any{"base": 1}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(tc.noSync)
			var last twins.Twin
			for i := range 20 {
				var err error
				if last, err = s.Update(ctx, id, "g", twins.Update{Desired: map[string]any{fmt.Sprintf("k%d", i): i}}); err != nil {
					t.Fatal(err)
				}
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
			got, err := s.Get(ctx, id, "g")
			if err != nil {
				t.Fatal(err)
			}
			kept := got.Version == last.Version && len(got.Desired.Values) == 20
			lost := got.Version == 2 && len(got.Desired.Values) == 0 && got.Reported.Values["base"] != nil
			switch {
			case tc.survives && !kept:
				t.Fatalf("after crash: version %d with %d desired properties, want version %d with 20", got.Version, len(got.Desired.Values), last.Version)
			case !tc.survives && !lost:
				t.Fatalf("after crash without fsync: version %d, %d desired properties; want the synced baseline (version 2) only", got.Version, len(got.Desired.Values))
			}
		})
	}
}

func TestOpenPebbleNeedsDir(t *testing.T) {
	if _, err := twins.OpenPebble("", twins.PebbleOptions{}); err == nil {
		t.Fatal("OpenPebble with no directory and no in-memory FS succeeded")
	}
}

func benchStore(b *testing.B, sync bool) *twins.PebbleStore {
	s, err := twins.OpenPebble(filepath.Join(b.TempDir(), "twins"), twins.PebbleOptions{NoSync: !sync})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// reportedPatch is a typical device report: a handful of scalar and
// nested properties.
var reportedPatch = map[string]any{
	"firmware":  "1.4.2",
	"battery":   87,
	"telemetry": map[string]any{"interval": 30, "enabled": true},
}

func BenchmarkGet(b *testing.B) {
	s := benchStore(b, false)
	ctx := context.Background()
	const devices = 1000
	for i := range devices {
		if _, err := s.PatchReported(ctx, twins.ID{DeviceID: fmt.Sprintf("d%d", i)}, "g", reportedPatch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := twins.ID{DeviceID: fmt.Sprintf("d%d", n.Add(1)%devices)}
			if _, err := s.Get(ctx, id, "g"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchmarkPatchReported(b *testing.B, sync bool, parallelism int) {
	s := benchStore(b, sync)
	ctx := context.Background()
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := twins.ID{DeviceID: fmt.Sprintf("d%d", n.Add(1)%1000)}
			if _, err := s.PatchReported(ctx, id, "g", reportedPatch); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkPatchReportedSync is a durable write per operation, from
// GOMAXPROCS writers.
func BenchmarkPatchReportedSync(b *testing.B) { benchmarkPatchReported(b, true, 1) }

// BenchmarkPatchReportedSync32 has 32 writers per CPU: they share fsyncs
// through pebble's commit pipeline, so the cost per write drops.
func BenchmarkPatchReportedSync32(b *testing.B) { benchmarkPatchReported(b, true, 32) }

// BenchmarkPatchReportedNoSync measures the write path without the fsync.
func BenchmarkPatchReportedNoSync(b *testing.B) { benchmarkPatchReported(b, false, 1) }
