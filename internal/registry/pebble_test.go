package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/registry"
	"amqphub/internal/registry/registrytest"
)

func TestPebbleConformance(t *testing.T) {
	variants := []struct {
		name string
		open func(t *testing.T) registry.Store
	}{
		{"in-memory", func(t *testing.T) registry.Store {
			s, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"on-disk", func(t *testing.T) registry.Store {
			s, err := registry.OpenPebble(t.TempDir(), registry.PebbleOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		// A tiny cache forces evictions and cache misses on every path.
		{"tiny-cache", func(t *testing.T) registry.Store {
			s, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true, CacheEntries: 2})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"no-cache", func(t *testing.T) registry.Store {
			s, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true, CacheEntries: -1})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		// Shared database with another component's keys around ours.
		{"shared-db", func(t *testing.T) registry.Store {
			db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			for _, k := range []string{"reg", "reg/", "reg/d", "reg/e/x", "reh/d/x", "c2d/d/x"} {
				if err := db.Set([]byte(k), []byte("foreign"), nil); err != nil {
					t.Fatal(err)
				}
			}
			return registry.NewPebbleStore(db, "reg/", registry.PebbleOptions{})
		}},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			registrytest.Run(t, v.open)
		})
	}
}

func TestOpenPebbleNeedsDir(t *testing.T) {
	_, err := registry.OpenPebble("", registry.PebbleOptions{})
	if !errors.Is(err, registry.ErrInvalidArgument) {
		t.Fatalf("OpenPebble(\"\") = %v", err)
	}
}

// TestPebbleRestart writes, closes, reopens the same directory and checks
// everything came back, including deletions.
func TestPebbleRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := registry.OpenPebble(dir, registry.PebbleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var want []registry.Device
	for i := range 5 {
		d, err := s.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("dev%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, d)
	}
	upd := want[1]
	upd.Status = registry.StatusDisabled
	if want[1], err = s.ReplaceDevice(ctx, upd, upd.ETag); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, "dev4", ""); err != nil {
		t.Fatal(err)
	}
	want = want[:4]
	mod, err := s.CreateModule(ctx, registry.Module{DeviceID: "dev0", ModuleID: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := registry.OpenPebble(dir, registry.PebbleOptions{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	got, err := s2.ListDevices(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after restart:\n got %+v\nwant %+v", got, want)
	}
	if _, err := s2.GetDevice(ctx, "dev4"); !errors.Is(err, registry.ErrDeviceNotFound) {
		t.Fatalf("deleted device came back: %v", err)
	}
	m, err := s2.GetModule(ctx, "dev0", "m")
	if err != nil || m != mod {
		t.Fatalf("module after restart = %+v, %v", m, err)
	}
	// The generation counter must not repeat across restarts either.
	again, err := s2.CreateDevice(ctx, registry.Device{DeviceID: "dev4"})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range want {
		if d.GenerationID == again.GenerationID {
			t.Fatalf("generationId %q reused after restart", again.GenerationID)
		}
	}
}

func TestPebbleCorruptRecord(t *testing.T) {
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Set([]byte("reg/d/broken"), []byte("\x09garbage"), nil); err != nil {
		t.Fatal(err)
	}
	s := registry.NewPebbleStore(db, "reg/", registry.PebbleOptions{})
	_, err = s.GetDevice(context.Background(), "broken")
	if err == nil || errors.Is(err, registry.ErrDeviceNotFound) {
		t.Fatalf("GetDevice(corrupt) = %v, want a decode error", err)
	}
	if _, err := s.ListDevices(context.Background(), "", 0); err == nil {
		t.Fatal("ListDevices over a corrupt record succeeded")
	}
}

func BenchmarkGetDevice(b *testing.B) {
	for _, bc := range []struct {
		name  string
		cache int
	}{{"cached", 0}, {"uncached", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			s, err := registry.OpenPebble(b.TempDir(), registry.PebbleOptions{CacheEntries: bc.cache})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const n = 1000
			for i := range n {
				if _, err := s.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("device-%05d", i)}); err != nil {
					b.Fatal(err)
				}
			}
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("device-%05d", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := s.GetDevice(ctx, ids[i%n]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

func BenchmarkCreateDevice(b *testing.B) {
	ctx := context.Background()
	s, err := registry.OpenPebble(b.TempDir(), registry.PebbleOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := s.CreateDevice(ctx, registry.Device{DeviceID: fmt.Sprintf("d%d", i)}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
