package jstwins_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/twins"
	"amqphub/store/twins/jstwins"
	"amqphub/store/twins/twinstest"
)

var (
	ctx     = context.Background()
	buckets atomic.Int64
)

// uniqueBucket gives every store of a test binary its own bucket on a
// shared server.
func uniqueBucket() string { return fmt.Sprintf("T%d_twins", buckets.Add(1)) }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// node is one hub node: its own connection to the server.
func node(t testing.TB, url string) jetstream.JetStream {
	t.Helper()
	nc := natstest.Connect(t, url)
	js := natstest.JetStream(t, nc)
	return js
}

func open(t testing.TB, js jetstream.JetStream, o jstwins.Options) *jstwins.Store {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := jstwins.Open(octx, js, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	srv := natstest.RunServer(t)
	js := node(t, srv.ClientURL())
	twinstest.Run(t, func(t *testing.T, now func() time.Time) (twins.Store, func() twins.Store) {
		o := jstwins.Options{Bucket: uniqueBucket(), Now: now}
		cur := open(t, js, o)
		return cur, func() twins.Store {
			if err := cur.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			cur = open(t, js, o)
			return cur
		}
	})
}

// recorder collects announcements.
type recorder struct {
	mu      sync.Mutex
	changes []twins.DesiredChange
}

func (r *recorder) add(c twins.DesiredChange) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
}

func (r *recorder) snapshot() []twins.DesiredChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]twins.DesiredChange(nil), r.changes...)
}

func lastVersion(r *recorder) int64 {
	all := r.snapshot()
	if len(all) == 0 {
		return 0
	}
	return all[len(all)-1].Version
}

// waitFor polls until cond holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // poll
	}
}

// merge applies a JSON merge patch to dst, as device SDKs do.
func merge(dst, patch map[string]any) {
	for k, v := range patch {
		switch v := v.(type) {
		case nil:
			delete(dst, k)
		case map[string]any:
			sub, ok := dst[k].(map[string]any)
			if !ok {
				sub = map[string]any{}
				dst[k] = sub
			}
			merge(sub, v)
		default:
			dst[k] = v
		}
	}
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func obj(t testing.TB, s string) map[string]any {
	t.Helper()
	m, err := twins.ParseObject([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDesiredAcrossNodes: a burst of updates on node B is announced on
// node A, each version once, in order, with the patch B applied; B
// announces its own writes once too (not again when its watch delivers
// them).
func TestDesiredAcrossNodes(t *testing.T) {
	srv := natstest.RunServer(t)
	bucket := uniqueBucket()
	a := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	b := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	var onA, onB recorder
	defer a.SubscribeDesired(onA.add)()
	defer b.SubscribeDesired(onB.add)()

	id := twins.ID{DeviceID: "dev/with spaces.and*dots>", ModuleID: "mod.1"}
	const n = 50
	var want []twins.DesiredChange
	for i := range n {
		// Each patch sets one property, changes a shared one and removes
		// the previous one, so that patches differ from the state.
		patch := map[string]any{fmt.Sprintf("p%d", i): i, "shared": map[string]any{"i": i}}
		if i > 0 {
			patch[fmt.Sprintf("p%d", i-1)] = nil
		}
		tw, err := b.Update(ctx, id, "g1", twins.Update{Desired: patch})
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		want = append(want, twins.DesiredChange{ID: id, Generation: "g1", Version: tw.Desired.Version, Patch: patch})
	}
	// Barriers: a write by B that A announces after the burst, then a
	// write by A that B's watch delivers after all of B's own writes.
	if _, err := b.Update(ctx, id, "g1", twins.Update{Desired: map[string]any{"barrierB": true}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A to announce B's barrier", func() bool { return lastVersion(&onA) == n+2 })
	if _, err := a.Update(ctx, id, "g1", twins.Update{Desired: map[string]any{"barrierA": true}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "B to announce A's barrier", func() bool { return lastVersion(&onB) == n+3 })

	// B announced each of its own writes once, with the patch applied.
	gotB := onB.snapshot()
	if len(gotB) != n+2 {
		t.Errorf("B announced %d changes, want %d (own writes announced twice?)", len(gotB), n+2)
	} else if g, w := jsonOf(t, gotB[:n]), jsonOf(t, want); g != w {
		t.Errorf("B announced\n%s\nwant\n%s", g, w)
	}
	// A announced every version in order, each once, with the exact patch
	// unless its watch missed versions (then the difference, which must
	// lead to the same desired properties).
	final, err := b.Get(ctx, id, "g1")
	if err != nil {
		t.Fatal(err)
	}
	model := map[string]any{}
	prev, coalesced := int64(1), 0
	for _, c := range onA.snapshot() {
		switch {
		case c.Version <= prev:
			t.Errorf("A announced version %d after %d", c.Version, prev)
		case c.Version == prev+1 && c.Version-2 < n:
			if g, w := jsonOf(t, c.Patch), jsonOf(t, want[c.Version-2].Patch); g != w {
				t.Errorf("A announced version %d with %s, want %s", c.Version, g, w)
			}
		case c.Version > prev+1:
			coalesced += int(c.Version - prev - 1)
		}
		prev = c.Version
		merge(model, c.Patch)
	}
	if prev != final.Desired.Version {
		t.Errorf("A's last announcement is version %d, want %d", prev, final.Desired.Version)
	}
	if g, w := jsonOf(t, model), jsonOf(t, final.Desired.Values); g != w {
		t.Errorf("A's announcements lead to %s, want %s", g, w)
	}
	t.Logf("A coalesced %d of %d versions", coalesced, n+1)
	// Both nodes read the same final twin.
	ta, err := a.Get(ctx, id, "g1")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Get(ctx, id, "g1")
	if err != nil {
		t.Fatal(err)
	}
	if g, w := jsonOf(t, ta), jsonOf(t, tb); g != w {
		t.Errorf("A reads %s\nB reads %s", g, w)
	}
}

// TestConcurrentReportedAcrossNodes: reported patches racing from two nodes
// on one twin all land (compare-and-set retries), each with its own
// version.
func TestConcurrentReportedAcrossNodes(t *testing.T) {
	srv := natstest.RunServer(t)
	bucket := uniqueBucket()
	stores := []*jstwins.Store{
		open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket}),
		open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket}),
	}
	const workers, each = 3, 15
	id := twins.ID{DeviceID: "hot"}
	var wg sync.WaitGroup
	var versions sync.Map
	errs := make(chan error, len(stores)*workers*each)
	for si, s := range stores {
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					tw, err := s.PatchReported(ctx, id, "g", map[string]any{fmt.Sprintf("s%dw%di%d", si, w, i): i})
					if err != nil {
						errs <- err
						return
					}
					if _, dup := versions.LoadOrStore(tw.Version, true); dup {
						errs <- fmt.Errorf("two writes returned version %d", tw.Version)
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	const total = 2 * workers * each
	for i, s := range stores {
		var tw twins.Twin
		waitFor(t, fmt.Sprintf("node %d to see every write", i), func() bool {
			var err error
			tw, err = s.Get(ctx, id, "g")
			return err == nil && tw.Version == 1+total
		})
		if len(tw.Reported.Values) != total || tw.Reported.Version != 1+total {
			t.Errorf("node %d: %d reported properties at version %d, want %d at %d: lost updates",
				i, len(tw.Reported.Values), tw.Reported.Version, total, 1+total)
		}
	}
}

// TestIfMatchAcrossNodes: If-Match is checked against the bucket's value,
// not against a node's possibly stale cache.
func TestIfMatchAcrossNodes(t *testing.T) {
	srv := natstest.RunServer(t)
	bucket := uniqueBucket()
	a := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	b := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	id := twins.ID{DeviceID: "d"}
	for i := range 20 {
		before, err := a.Get(ctx, id, "g")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Update(ctx, id, "g", twins.Update{Tags: map[string]any{"b": i}}); err != nil {
			t.Fatal(err)
		}
		// A's cache may or may not have B's write yet: either way the
		// etag A read is stale.
		_, err = a.Update(ctx, id, "g", twins.Update{IfMatch: before.ETag, Tags: map[string]any{"a": i}})
		if !errors.Is(err, twins.ErrPreconditionFailed) {
			t.Fatalf("round %d: update with a stale etag: %v, want ErrPreconditionFailed", i, err)
		}
	}
}

// TestDeleteDeviceAcrossNodes: DeleteDevice on one node removes module
// twins another node just created, even before the first node's watch
// delivered them.
func TestDeleteDeviceAcrossNodes(t *testing.T) {
	srv := natstest.RunServer(t)
	bucket := uniqueBucket()
	a := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	b := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	ids := []twins.ID{{DeviceID: "d"}, {DeviceID: "d", ModuleID: "m1"}, {DeviceID: "d", ModuleID: "m2"}}
	other := twins.ID{DeviceID: "d2", ModuleID: "m1"}
	for _, id := range append(ids, other) {
		if _, err := b.PatchReported(ctx, id, "g", map[string]any{"x": 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.DeleteDevice(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*jstwins.Store{a, b} {
		for _, id := range ids {
			waitFor(t, fmt.Sprintf("%s to be deleted", id), func() bool {
				tw, err := s.Get(ctx, id, "g")
				return err == nil && tw.Version == 1
			})
		}
		// d2/m1 stays.
		waitFor(t, "d2/m1 to be visible", func() bool {
			tw, err := s.Get(ctx, other, "g")
			return err == nil && tw.Version == 2
		})
	}
	// A write after the deletion starts a new twin on both nodes.
	tw, err := a.PatchReported(ctx, ids[1], "g", map[string]any{"y": 1})
	if err != nil {
		t.Fatal(err)
	}
	if tw.Version != 2 || len(tw.Reported.Values) != 1 {
		t.Errorf("twin after deletion: version %d reported %v, want a fresh twin", tw.Version, tw.Reported.Values)
	}
	tw, err = b.PatchReported(ctx, ids[1], "g", map[string]any{"z": 1})
	if err != nil {
		t.Fatal(err)
	}
	if tw.Version != 3 || len(tw.Reported.Values) != 2 {
		t.Errorf("B's write after A's: version %d reported %v, want version 3 with y and z", tw.Version, tw.Reported.Values)
	}
}

// TestServerRestart: twins survive a restart of the NATS server (file
// storage) and of the store.
func TestServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv, err := natstest.StartServer(dir)
	if err != nil {
		t.Fatal(err)
	}
	bucket := uniqueBucket()
	s := open(t, node(t, srv.ClientURL()), jstwins.Options{Bucket: bucket})
	id := twins.ID{DeviceID: "d", ModuleID: "m"}
	if _, err := s.Update(ctx, id, "g", twins.Update{Tags: obj(t, `{"t":1}`), Desired: obj(t, `{"d":{"e":1.5}}`)}); err != nil {
		t.Fatal(err)
	}
	before, err := s.PatchReported(ctx, id, "g", obj(t, `{"r":[1,2]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	srv, err = natstest.StartServer(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc := natstest.Connect(t, srv.ClientURL())
	natstest.WaitJetStream(t, nc)
	js := natstest.JetStream(t, nc)
	s = open(t, js, jstwins.Options{Bucket: bucket})
	after, err := s.Get(ctx, id, "g")
	if err != nil {
		t.Fatal(err)
	}
	if g, w := jsonOf(t, after), jsonOf(t, before); g != w {
		t.Errorf("after restart %s\nbefore      %s", g, w)
	}
}

// TestServerGone: with the server down every call fails promptly with
// ErrUnavailable, and recovers when it is back.
func TestServerGone(t *testing.T) {
	dir := t.TempDir()
	srv, err := natstest.StartServer(dir)
	if err != nil {
		t.Fatal(err)
	}
	nc := natstest.Connect(t, srv.ClientURL())
	js := natstest.JetStream(t, nc)
	s := open(t, js, jstwins.Options{Bucket: uniqueBucket(), Timeout: time.Second})
	id := twins.ID{DeviceID: "d"}
	if _, err := s.PatchReported(ctx, id, "g", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	waitFor(t, "the client to notice", func() bool { return !nc.IsConnected() })

	calls := []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := s.Get(ctx, id, "g"); return err }},
		{"PatchReported", func() error { _, err := s.PatchReported(ctx, id, "g", map[string]any{"b": 1}); return err }},
		{"Update", func() error {
			_, err := s.Update(ctx, id, "g", twins.Update{Desired: map[string]any{"c": 1}})
			return err
		}},
		{"Delete", func() error { return s.Delete(ctx, id) }},
		{"DeleteDevice", func() error { return s.DeleteDevice(ctx, "d") }},
	}
	for _, c := range calls {
		start := time.Now()
		err := c.call()
		if !errors.Is(err, jstwins.ErrUnavailable) {
			t.Errorf("%s with the server down: %v, want ErrUnavailable", c.name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s took %v to fail", c.name, d)
		}
	}
	if _, err := jstwins.Open(ctx, js, jstwins.Options{Bucket: uniqueBucket(), Timeout: time.Second}); !errors.Is(err, jstwins.ErrUnavailable) {
		t.Errorf("Open with the server down: %v, want ErrUnavailable", err)
	}
}

// TestWriteTimeout: a write whose acknowledgement never comes (the
// connection is up, but a silent subscriber instead of the stream gets
// the bucket's subjects) fails within the timeout instead of hanging.
func TestWriteTimeout(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js := natstest.JetStream(t, nc)
	bucket := uniqueBucket()
	s := open(t, js, jstwins.Options{Bucket: bucket, Timeout: 300 * time.Millisecond})
	id := twins.ID{DeviceID: "d"}
	if _, err := s.PatchReported(ctx, id, "g", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	// Take the stream's subjects away: publishes get no acknowledgement.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	stream, err := js.Stream(sctx, "KV_"+bucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.CachedInfo().Config
	cfg.Subjects = []string{"elsewhere.>"}
	if _, err := js.UpdateStream(sctx, cfg); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe("$KV."+bucket+".>", func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.PatchReported(ctx, id, "g", map[string]any{"b": 1})
	if err == nil {
		t.Fatal("a write without acknowledgement succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the write took %v to fail (timeout 300ms)", d)
	}
	t.Logf("error: %v", err)
}
