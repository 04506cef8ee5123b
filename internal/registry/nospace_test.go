package registry_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"amqphub/internal/pebbleutil"
	"amqphub/internal/pebbleutil/pebbleutiltest"
	"amqphub/internal/registry"
	"amqphub/internal/testutil"
)

// TestPebbleRefusesWritesWithoutSpace runs every write against a store
// whose guard reports too little free space: each is refused with
// ErrNoSpace before it reaches Pebble, reads go on, and writes succeed
// again once space returns, without reopening the store.
func TestPebbleRefusesWritesWithoutSpace(t *testing.T) {
	ctx := context.Background()
	disk := pebbleutiltest.NewDisk()
	logs := &testutil.LockedBuffer{}
	s, err := registry.OpenPebble("", registry.PebbleOptions{
		InMemory:     true,
		CacheEntries: -1, // every read goes to the database
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
		DiskGuard:    disk.Options(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dev, err := s.CreateDevice(ctx, registry.Device{DeviceID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	mod, err := s.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m1"})
	if err != nil {
		t.Fatal(err)
	}

	writes := []struct {
		name string
		do   func() error
	}{
		{"create device", func() error { _, err := s.CreateDevice(ctx, registry.Device{DeviceID: "d2"}); return err }},
		{"replace device", func() error {
			d := dev
			d.Status = registry.StatusDisabled
			_, err := s.ReplaceDevice(ctx, d, "*")
			return err
		}},
		{"regenerate device key", func() error {
			_, err := s.RegenerateDeviceKey(ctx, "d1", registry.KeyPrimary, "*")
			return err
		}},
		{"create module", func() error {
			_, err := s.CreateModule(ctx, registry.Module{DeviceID: "d1", ModuleID: "m2"})
			return err
		}},
		{"replace module", func() error { _, err := s.ReplaceModule(ctx, mod, "*"); return err }},
		{"regenerate module key", func() error {
			_, err := s.RegenerateModuleKey(ctx, "d1", "m1", registry.KeySwap, "*")
			return err
		}},
		{"delete module", func() error { return s.DeleteModule(ctx, "d1", "m1", "*") }},
		{"delete device", func() error { return s.DeleteDevice(ctx, "d1", "*") }},
	}

	disk.Full()
	for _, w := range writes {
		if err := w.do(); !errors.Is(err, pebbleutil.ErrNoSpace) {
			t.Errorf("%s without space: %v, want ErrNoSpace", w.name, err)
		}
	}
	// Nothing was written, and reads still work.
	got, err := s.GetDevice(ctx, "d1")
	if err != nil || got.ETag != dev.ETag || got.Status != registry.StatusEnabled || got.Authentication != dev.Authentication {
		t.Fatalf("device after refused writes: %+v, %v; want it unchanged", got, err)
	}
	if _, err := s.GetDevice(ctx, "d2"); !errors.Is(err, registry.ErrDeviceNotFound) {
		t.Fatalf("refused create left a device: %v", err)
	}
	ms, err := s.ListModules(ctx, "d1")
	if err != nil || len(ms) != 1 || ms[0].ETag != mod.ETag {
		t.Fatalf("modules after refused writes: %+v, %v; want m1 unchanged", ms, err)
	}
	if n := strings.Count(logs.String(), "refusing writes"); n != 1 {
		t.Fatalf("refusal logged %d times, want once:\n%s", n, logs)
	}

	disk.Freed()
	for _, w := range writes {
		if err := w.do(); err != nil {
			t.Errorf("%s after space returned: %v", w.name, err)
		}
	}
	if _, err := s.GetDevice(ctx, "d1"); !errors.Is(err, registry.ErrDeviceNotFound) {
		t.Fatalf("device d1 after the delete: %v", err)
	}
	if !strings.Contains(logs.String(), "accepting writes again") {
		t.Fatalf("recovery not logged:\n%s", logs)
	}
}
