package jsregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/internal/registry"
	"amqphub/internal/registry/registrytest"
)

var bucketSeq atomic.Int64

// newJS starts an embedded server and returns a JetStream context on a
// new connection to it.
func newJS(t testing.TB) (*server.Server, jetstream.JetStream) {
	t.Helper()
	srv := natstest.RunServer(t)
	return srv, connectJS(t, srv)
}

// connectJS opens another connection, as another node would.
func connectJS(t testing.TB, srv *server.Server) jetstream.JetStream {
	t.Helper()
	js := natstest.JetStream(t, natstest.Connect(t, srv.ClientURL()))
	return js
}

func open(t testing.TB, js jetstream.JetStream, bucket string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, js, Options{Bucket: bucket, Storage: jetstream.MemoryStorage, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("Open(%s): %v", bucket, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func freshBucket() string { return fmt.Sprintf("REG_%d", bucketSeq.Add(1)) }

func TestConformance(t *testing.T) {
	_, js := newJS(t)
	registrytest.Run(t, func(t *testing.T) registry.Store {
		return open(t, js, freshBucket())
	})
}

// eventually polls cond until it holds or 5 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sasDevice(id string) registry.Device {
	return registry.Device{DeviceID: id, Authentication: registry.Authentication{
		SymmetricKey: registry.SymmetricKey{PrimaryKey: registrytest.Key1, SecondaryKey: registrytest.Key2},
	}}
}

// twoNodes opens two Stores on one bucket through separate connections.
func twoNodes(t *testing.T) (a, b *Store) {
	srv, js := newJS(t)
	bucket := freshBucket()
	return open(t, js, bucket), open(t, connectJS(t, srv), bucket)
}

func TestTwoNodesSeeEachOthersWrites(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	var mu sync.Mutex
	seen := map[string]int{}
	cancel := b.OnChange(func(deviceID, moduleID string) {
		// Callbacks may read the store: no lock is held.
		_, _ = b.GetDevice(ctx, deviceID)
		mu.Lock()
		seen[deviceID+"/"+moduleID]++
		mu.Unlock()
	})
	defer cancel()
	count := func(k string) int {
		mu.Lock()
		defer mu.Unlock()
		return seen[k]
	}

	d, err := a.CreateDevice(ctx, sasDevice("dev/1"))
	if err == nil {
		t.Fatal("CreateDevice accepted an invalid id")
	}
	d, err = a.CreateDevice(ctx, sasDevice("dev.1*"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "device on node b", func() bool {
		got, err := b.GetDevice(ctx, d.DeviceID)
		return err == nil && got.ETag == d.ETag
	})
	eventually(t, "OnChange on node b", func() bool { return count(d.DeviceID+"/") == 1 })

	if _, err := a.CreateModule(ctx, registry.Module{DeviceID: d.DeviceID, ModuleID: "m.1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "module on node b", func() bool {
		ms, err := b.ListModules(ctx, d.DeviceID)
		return err == nil && len(ms) == 1 && ms[0].ModuleID == "m.1"
	})
	eventually(t, "module OnChange on node b", func() bool { return count(d.DeviceID+"/m.1") == 1 })

	// b replaces with a's etag although b's own write path reads its cache.
	upd := d
	upd.Status = registry.StatusDisabled
	r, err := b.ReplaceDevice(ctx, upd, d.ETag)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replace on node a", func() bool {
		got, err := a.GetDevice(ctx, d.DeviceID)
		return err == nil && got.ETag == r.ETag && got.Status == registry.StatusDisabled
	})
	total, enabled, _ := a.CountDevices(ctx)
	if total != 1 || enabled != 0 {
		t.Fatalf("CountDevices on a = %d, %d; want 1, 0", total, enabled)
	}

	// A delete on b cascades; a sees device and module go.
	if err := b.DeleteDevice(ctx, d.DeviceID, r.ETag); err != nil {
		t.Fatal(err)
	}
	eventually(t, "delete on node a", func() bool {
		_, err1 := a.GetDevice(ctx, d.DeviceID)
		_, err2 := a.GetModule(ctx, d.DeviceID, "m.1")
		return errors.Is(err1, registry.ErrDeviceNotFound) && errors.Is(err2, registry.ErrModuleNotFound) &&
			len(a.cache.rawModules(d.DeviceID)) == 0
	})
	// The device's own change notifications were made once each on b:
	// created (watch), replaced (local), deleted (local).
	if n := count(d.DeviceID + "/"); n != 3 {
		t.Fatalf("OnChange for the device called %d times on b, want 3", n)
	}
}

// TestWriteOnStaleCache writes on b with an etag b's cache has not seen
// yet: the write must re-read instead of failing the precondition.
func TestWriteOnStaleCache(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	d, err := a.CreateDevice(ctx, sasDevice("stale"))
	if err != nil {
		t.Fatal(err)
	}
	// No wait: b may or may not have it yet; both must work.
	r, err := b.ReplaceDevice(ctx, d, d.ETag)
	if err != nil {
		t.Fatalf("ReplaceDevice on the other node right after create: %v", err)
	}
	m, err := b.CreateModule(ctx, registry.Module{DeviceID: "stale", ModuleID: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.RegenerateModuleKey(ctx, "stale", "m", registry.KeySwap, m.ETag); err != nil {
		t.Fatalf("RegenerateModuleKey on the other node right after create: %v", err)
	}
	if err := a.DeleteDevice(ctx, "stale", r.ETag); err != nil {
		t.Fatalf("DeleteDevice on the other node right after replace: %v", err)
	}
}

// lagBehind makes c look like the cache of a node whose watch has not yet
// delivered the newest write of a device or module: missing drops the
// entry (the create not seen), otherwise its etag is an older one.
func lagBehind(c *cache, deviceID, moduleID string, missing bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if moduleID == "" {
		if missing {
			delete(c.devices, deviceID)
			return
		}
		e := c.devices[deviceID]
		e.d.ETag = "older"
		c.devices[deviceID] = e
		return
	}
	if missing {
		delete(c.modules[deviceID], moduleID)
		return
	}
	e := c.modules[deviceID][moduleID]
	e.m.ETag = "older"
	c.modules[deviceID][moduleID] = e
}

// TestWriteConfirmsLaggingCache: a conditional write on a node whose cache
// lags (the record missing, or an older etag) must read the bucket before
// answering not-found or precondition-failed, and then succeed.
func TestWriteConfirmsLaggingCache(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	n := 0
	for _, missing := range []bool{true, false} {
		for _, tc := range []struct {
			name  string
			write func(id string, d registry.Device, m registry.Module) error
			mod   bool
		}{
			{"replace device", func(id string, d registry.Device, _ registry.Module) error {
				_, err := b.ReplaceDevice(ctx, d, d.ETag)
				return err
			}, false},
			{"regenerate device key", func(id string, d registry.Device, _ registry.Module) error {
				_, err := b.RegenerateDeviceKey(ctx, id, registry.KeySwap, d.ETag)
				return err
			}, false},
			{"delete device", func(id string, d registry.Device, _ registry.Module) error {
				return b.DeleteDevice(ctx, id, d.ETag)
			}, false},
			{"replace module", func(id string, _ registry.Device, m registry.Module) error {
				_, err := b.ReplaceModule(ctx, m, m.ETag)
				return err
			}, true},
			{"delete module", func(id string, _ registry.Device, m registry.Module) error {
				return b.DeleteModule(ctx, id, m.ModuleID, m.ETag)
			}, true},
		} {
			n++
			id := fmt.Sprintf("lag-%d", n)
			d, err := a.CreateDevice(ctx, sasDevice(id))
			if err != nil {
				t.Fatal(err)
			}
			m, err := a.CreateModule(ctx, registry.Module{DeviceID: id, ModuleID: "m"})
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "b sees the module", func() bool { _, err := b.GetModule(ctx, id, "m"); return err == nil })
			if tc.mod {
				lagBehind(b.cache, id, "m", missing)
			} else {
				lagBehind(b.cache, id, "", missing)
			}
			if err := tc.write(id, d, m); err != nil {
				t.Errorf("%s with the cache lagging (missing %v): %v", tc.name, missing, err)
			}
		}
	}
}

func TestTwoNodesConditionalRace(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	d, err := a.CreateDevice(ctx, sasDevice("race"))
	if err != nil {
		t.Fatal(err)
	}
	for round := range 20 {
		cur, err := a.GetDevice(ctx, "race")
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "b in sync", func() bool {
			got, err := b.GetDevice(ctx, "race")
			return err == nil && got.ETag == cur.ETag
		})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, s := range []*Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u := d
				u.StatusReason = fmt.Sprintf("round %d node %d", round, i)
				_, errs[i] = s.ReplaceDevice(ctx, u, cur.ETag)
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, registry.ErrPreconditionFailed):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners with one etag, want 1 (%v)", round, wins, errs)
		}
	}
}

// TestTwoNodesNoLostUpdates swaps a device's keys from both nodes at once:
// every swap must apply to the value the previous one left, so an even
// number of swaps gives back the original keys.
func TestTwoNodesNoLostUpdates(t *testing.T) {
	ctx := context.Background()
	a, b := twoNodes(t)
	d, err := a.CreateDevice(ctx, sasDevice("swap"))
	if err != nil {
		t.Fatal(err)
	}
	const perWriter = 15
	var wg sync.WaitGroup
	var mu sync.Mutex
	etags := map[string]bool{d.ETag: true}
	var firstErr error
	for _, s := range []*Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWriter {
				got, err := s.RegenerateDeviceKey(ctx, "swap", registry.KeySwap, "")
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				etags[got.ETag] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}
	if len(etags) != 4*perWriter+1 {
		t.Fatalf("%d distinct etags, want %d", len(etags), 4*perWriter+1)
	}
	e, err := a.kv.Get(ctx, deviceKey("swap"))
	if err != nil {
		t.Fatal(err)
	}
	var final registry.Device
	if err := json.Unmarshal(e.Value(), &final); err != nil {
		t.Fatal(err)
	}
	if final.Authentication.SymmetricKey != d.Authentication.SymmetricKey {
		t.Fatalf("after %d swaps the keys are %+v, want the original %+v", 4*perWriter, final.Authentication.SymmetricKey, d.Authentication.SymmetricKey)
	}
	if !etags[final.ETag] {
		t.Fatalf("stored etag %q was not returned by any writer", final.ETag)
	}
	for name, s := range map[string]*Store{"a": a, "b": b} {
		eventually(t, "node "+name+" converges", func() bool {
			got, err := s.GetDevice(ctx, "swap")
			return err == nil && got.ETag == final.ETag
		})
	}
}

// TestOrphanModules leaves module keys of a missing device, as a node dying
// mid-cascade would: they are invisible and swept by the next create.
func TestOrphanModules(t *testing.T) {
	ctx := context.Background()
	_, js := newJS(t)
	bucket := freshBucket()
	s := open(t, js, bucket)
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	put := func(dev, mod string) {
		t.Helper()
		val := fmt.Sprintf(`{"deviceId":%q,"moduleId":%q,"etag":"x"}`, dev, mod)
		if _, err := kv.Put(ctx, moduleKey(dev, mod), []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		clean func(id string) error
	}{
		{"create", func(id string) error {
			_, err := s.CreateDevice(ctx, sasDevice(id))
			return err
		}},
		{"delete", func(id string) error {
			if err := s.DeleteDevice(ctx, id, ""); !errors.Is(err, registry.ErrDeviceNotFound) {
				return fmt.Errorf("DeleteDevice(missing) = %v", err)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "orphan-" + tt.name
			put(id, "m1")
			put(id, "m2")
			eventually(t, "watch delivers the orphans", func() bool { return len(s.cache.rawModules(id)) == 2 })
			if _, err := s.GetModule(ctx, id, "m1"); !errors.Is(err, registry.ErrModuleNotFound) {
				t.Fatalf("GetModule(orphan) = %v", err)
			}
			if _, err := s.ListModules(ctx, id); !errors.Is(err, registry.ErrDeviceNotFound) {
				t.Fatalf("ListModules(orphan) = %v", err)
			}
			if err := tt.clean(id); err != nil {
				t.Fatal(err)
			}
			if n := len(s.cache.rawModules(id)); n != 0 {
				t.Fatalf("%d orphans left in the cache", n)
			}
			for _, m := range []string{"m1", "m2"} {
				if _, err := kv.Get(ctx, moduleKey(id, m)); !errors.Is(err, jetstream.ErrKeyNotFound) {
					t.Fatalf("orphan %s still in the bucket: %v", m, err)
				}
			}
		})
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	_, js := newJS(t)
	bucket := freshBucket()
	s := open(t, js, bucket)
	for i := range 50 {
		if _, err := s.CreateDevice(ctx, sasDevice(fmt.Sprintf("d%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateModule(ctx, registry.Module{DeviceID: "d07", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDevice(ctx, "d13", ""); err != nil {
		t.Fatal(err)
	}
	want, _ := s.ListDevices(ctx, "", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := open(t, js, bucket)
	got, err := s2.ListDevices(ctx, "", 0)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) || len(got) != 49 {
		t.Fatalf("after reopen: %d devices, %v; want the %d from before", len(got), err, len(want))
	}
	if _, err := s2.GetModule(ctx, "d07", "m"); err != nil {
		t.Fatal(err)
	}
	page, _ := s2.ListDevices(ctx, "d12", 2)
	if len(page) != 2 || page[0].DeviceID != "d14" || page[1].DeviceID != "d15" {
		t.Fatalf("page after d12 = %v", page)
	}
}

func TestServerGone(t *testing.T) {
	ctx := context.Background()
	srv, js := newJS(t)
	s := open(t, js, freshBucket())
	d, err := s.CreateDevice(ctx, sasDevice("survivor"))
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	got, err := s.GetDevice(ctx, "survivor")
	if err != nil || got.ETag != d.ETag {
		t.Fatalf("GetDevice from cache with the server gone = %+v, %v", got, err)
	}
	writes := []struct {
		name string
		fn   func() error
	}{
		{"CreateDevice", func() error { _, err := s.CreateDevice(ctx, sasDevice("new")); return err }},
		{"ReplaceDevice", func() error { _, err := s.ReplaceDevice(ctx, d, ""); return err }},
		{"DeleteDevice", func() error { return s.DeleteDevice(ctx, "survivor", "") }},
		{"CreateModule", func() error {
			_, err := s.CreateModule(ctx, registry.Module{DeviceID: "survivor", ModuleID: "m"})
			return err
		}},
	}
	for _, w := range writes {
		start := time.Now()
		err := w.fn()
		if !errors.Is(err, registry.ErrUnavailable) {
			t.Fatalf("%s with the server gone = %v, want ErrUnavailable", w.name, err)
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("%s took %v to fail", w.name, el)
		}
	}
	start := time.Now()
	if err := s.Close(); err != nil || time.Since(start) > 3*time.Second {
		t.Fatalf("Close with the server gone: %v after %v", err, time.Since(start))
	}
	if _, err := s.GetDevice(ctx, "survivor"); !errors.Is(err, registry.ErrClosed) {
		t.Fatalf("GetDevice after Close = %v", err)
	}
}

func TestKeys(t *testing.T) {
	tests := []struct{ dev, mod string }{
		{"plain", ""},
		{"a-.+%_#*?!(),:=@$'Z9", ""},
		{"dev", "$edgeAgent"},
		{"d.e.v", "m*>"},
	}
	for _, tt := range tests {
		key := deviceKey(tt.dev)
		if tt.mod != "" {
			key = moduleKey(tt.dev, tt.mod)
		}
		dev, mod, err := parseKey(key)
		if err != nil || dev != tt.dev || mod != tt.mod {
			t.Errorf("parseKey(%q) = %q, %q, %v; want %q, %q", key, dev, mod, err, tt.dev, tt.mod)
		}
	}
	for _, bad := range []string{"x.abc", "d", "d.!!", "m.ZGV2", "m.ZGV2.", "d.a.b"} {
		if _, _, err := parseKey(bad); err == nil {
			t.Errorf("parseKey(%q) accepted", bad)
		}
	}
}

// TestOnChangeLocal checks that local writes are announced once each, after
// the write's locks are released: a listener may write the same device.
func TestOnChangeLocal(t *testing.T) {
	ctx := context.Background()
	_, js := newJS(t)
	s := open(t, js, freshBucket())
	var mu sync.Mutex
	calls := 0
	var cbErr error
	cancel := s.OnChange(func(deviceID, moduleID string) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			d, err := s.GetDevice(ctx, deviceID)
			if err == nil {
				d.StatusReason = "from callback"
				_, err = s.ReplaceDevice(ctx, d, d.ETag)
			}
			mu.Lock()
			cbErr = err
			mu.Unlock()
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := s.CreateDevice(ctx, sasDevice("cb"))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CreateDevice did not return: a listener writing the same device deadlocked")
	}
	// The create is announced by the write or, if the watch delivered it
	// first, by the watch: the listener's write may still be under way.
	var got registry.Device
	eventually(t, "the listener's write", func() bool {
		got, _ = s.GetDevice(ctx, "cb")
		return got.StatusReason == "from callback"
	})
	// Let the watch deliver both revisions; they must not be announced
	// again.
	eventually(t, "watch catches up", func() bool { return s.cache.lastRevision() >= 2 })
	cancel()
	if _, err := s.ReplaceDevice(ctx, got, ""); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if cbErr != nil || calls != 2 {
		t.Fatalf("listener called %d times (want 2: create, its own replace; none after cancel), error %v", calls, cbErr)
	}
}
