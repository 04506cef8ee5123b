package jsc2d_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/c2d"
	"amqphub/store/c2d/c2dtest"
	"amqphub/store/c2d/jsc2d"
)

// twoNodes opens two stores on one bucket, as two hub nodes would.
func twoNodes(t *testing.T, js jetstream.JetStream, cfg c2d.Config) (a, b *jsc2d.Store) {
	t.Helper()
	bucket := uniqueBucket()
	a = open(t, js, jsc2d.Options{Bucket: bucket, NodeID: "A", Config: cfg})
	t.Cleanup(func() { _ = a.Close() })
	b = open(t, js, jsc2d.Options{Bucket: bucket, NodeID: "B", Config: cfg})
	t.Cleanup(func() { _ = b.Close() })
	return a, b
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no signal: %s", what)
	}
}

func TestTwoNodes(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()

	t.Run("EnqueueOnBWakesWatchOnA", func(t *testing.T) {
		a, b := twoNodes(t, js, c2d.Config{})
		ch, stop := a.Watch("dev/modules/m1")
		defer stop()
		seq, err := b.Enqueue(ctx, "dev/modules/m1", c2d.NewMessage{MessageID: "x", Body: []byte("hello")})
		if err != nil {
			t.Fatal(err)
		}
		wait(t, ch, "enqueue on the other node")
		m, ok, err := a.Lock(ctx, "dev/modules/m1")
		if err != nil || !ok || m.Seq != seq || string(m.Body) != "hello" {
			t.Fatalf("Lock on A = %+v, %v, %v", m, ok, err)
		}
		// Settled on the node that did not lock it: the token is found there too.
		if err := b.Complete(ctx, "dev/modules/m1", m.LockToken); err != nil {
			t.Fatalf("Complete on B of A's lock: %v", err)
		}
		if err := a.Complete(ctx, "dev/modules/m1", m.LockToken); !errors.Is(err, c2d.ErrNotFound) {
			t.Fatalf("second Complete on A: %v; want ErrNotFound", err)
		}
	})

	t.Run("AbandonOnALockOnB", func(t *testing.T) {
		a, b := twoNodes(t, js, c2d.Config{})
		if _, err := a.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "x"}); err != nil {
			t.Fatal(err)
		}
		m, ok, err := a.Lock(ctx, "d")
		if err != nil || !ok {
			t.Fatalf("Lock on A: %v %v", ok, err)
		}
		if err := a.Abandon(ctx, "d", m.LockToken); err != nil {
			t.Fatal(err)
		}
		nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		m2, err := c2d.Next(nctx, b, "d")
		if err != nil || m2.Seq != m.Seq || m2.DeliveryCount != m.DeliveryCount+1 {
			t.Fatalf("Next on B = seq %d count %d, %v; want seq %d count %d", m2.Seq, m2.DeliveryCount, err, m.Seq, m.DeliveryCount+1)
		}
		// A's old token is unknown on both nodes (abandoned, as in Pebble).
		if err := a.Complete(ctx, "d", m.LockToken); !errors.Is(err, c2d.ErrNotFound) {
			t.Fatalf("Complete with the abandoned token: %v", err)
		}
	})

	t.Run("FeedbackFromATakenOnB", func(t *testing.T) {
		a, b := twoNodes(t, js, c2d.Config{})
		fb, stop := b.WatchFeedback()
		defer stop()
		if _, err := a.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "fb1", Ack: c2d.AckFull}); err != nil {
			t.Fatal(err)
		}
		m, ok, err := a.Lock(ctx, "d")
		if err != nil || !ok {
			t.Fatalf("Lock: %v %v", ok, err)
		}
		if err := a.Complete(ctx, "d", m.LockToken); err != nil {
			t.Fatal(err)
		}
		wait(t, fb, "feedback produced on A")
		batch, ok, err := b.TakeFeedback(ctx, 10)
		if err != nil || !ok || len(batch.Records) != 1 || batch.Records[0].OriginalMessageID != "fb1" || batch.Records[0].Status != c2d.StatusSuccess {
			t.Fatalf("TakeFeedback on B = %+v, %v, %v", batch, ok, err)
		}
		// While B holds the batch, A hands out nothing, even from a stale cache.
		if got, ok, err := a.TakeFeedback(ctx, 10); err != nil || ok {
			t.Fatalf("TakeFeedback on A during B's lock = %+v, %v, %v", got, ok, err)
		}
		// A restart of A does not release B's batch.
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		a = open(t, js, jsc2d.Options{Bucket: bucketOf(t, b), NodeID: "A"})
		defer a.Close()
		if got, ok, err := a.TakeFeedback(ctx, 10); err != nil || ok {
			t.Fatalf("TakeFeedback on restarted A during B's lock = %+v, %v, %v", got, ok, err)
		}
		if err := b.CompleteFeedback(ctx, batch.LockToken); err != nil {
			t.Fatal(err)
		}
		eventually(t, "A sees the feedback completed", func() bool {
			n, err := a.PendingFeedback(ctx)
			return err == nil && n == 0
		})
	})

	t.Run("LockLostOnEveryNode", func(t *testing.T) {
		// One manual clock for both nodes: the lock rules are evaluated
		// from stored times, so both nodes agree on them.
		clock := c2dtest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
		a, b := twoNodes(t, js, c2d.Config{Now: clock.Now, ManualSweep: true, LockDuration: time.Minute})
		if _, err := a.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "x"}); err != nil {
			t.Fatal(err)
		}
		first, ok, err := a.Lock(ctx, "d")
		if err != nil || !ok {
			t.Fatalf("Lock on A: %v %v", ok, err)
		}
		clock.Advance(time.Minute)
		for name, s := range map[string]*jsc2d.Store{"A": a, "B": b} {
			if err := s.Complete(ctx, "d", first.LockToken); !errors.Is(err, c2d.ErrLockLost) {
				t.Fatalf("Complete on %s with an expired lock: %v; want ErrLockLost", name, err)
			}
		}
		eventually(t, "B sees the expired lock", func() bool { c, _ := b.Pending(ctx, "d"); return c.Enqueued == 1 })
		second, ok, err := b.Lock(ctx, "d")
		if err != nil || !ok || second.Seq != first.Seq {
			t.Fatalf("Lock on B: %+v %v %v", second, ok, err)
		}
		for name, s := range map[string]*jsc2d.Store{"A": a, "B": b} {
			if err := s.Abandon(ctx, "d", first.LockToken); !errors.Is(err, c2d.ErrLockLost) {
				t.Fatalf("Abandon on %s with a replaced lock: %v; want ErrLockLost", name, err)
			}
		}
		if err := a.Release(ctx, "d", second.LockToken); err != nil {
			t.Fatalf("Release on A of B's lock: %v", err)
		}
		if err := b.Complete(ctx, "d", second.LockToken); !errors.Is(err, c2d.ErrLockLost) {
			t.Fatalf("Complete on B after a release on A: %v; want ErrLockLost", err)
		}
	})

	t.Run("ConcurrentConsumers", func(t *testing.T) {
		const total = 200
		a, b := twoNodes(t, js, c2d.Config{MaxDepth: total})
		var wg sync.WaitGroup
		errs := make(chan error, total)
		for p := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := p; i < total; i += 4 {
					if _, err := a.Enqueue(ctx, "q", c2d.NewMessage{MessageID: fmt.Sprint(i), Ack: c2d.AckPositive}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		start := time.Now()
		wg.Wait()
		t.Logf("enqueued %d in %v", total, time.Since(start))
		eventually(t, "B sees every message", func() bool {
			c, err := b.Pending(ctx, "q")
			return err == nil && c.Enqueued == total
		})
		var mu sync.Mutex
		held := map[uint64]string{}
		done := map[uint64]string{}
		for _, node := range []struct {
			name string
			s    *jsc2d.Store
		}{{"A", a}, {"B", b}} {
			for g := range 4 {
				who := fmt.Sprint(node.name, g)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						m, ok, err := node.s.Lock(ctx, "q")
						if err != nil {
							errs <- fmt.Errorf("%s: lock: %w", who, err)
							return
						}
						if !ok {
							return
						}
						mu.Lock()
						if h, dup := held[m.Seq]; dup {
							errs <- fmt.Errorf("message %d locked by %s while %s holds it", m.Seq, who, h)
						}
						held[m.Seq] = who
						mu.Unlock()
						if err := node.s.Complete(ctx, "q", m.LockToken); err != nil {
							errs <- fmt.Errorf("%s: complete %d: %w", who, m.Seq, err)
							return
						}
						mu.Lock()
						delete(held, m.Seq)
						if d, dup := done[m.Seq]; dup {
							errs <- fmt.Errorf("message %d completed by %s and %s", m.Seq, d, who)
						}
						done[m.Seq] = who
						mu.Unlock()
					}
				}()
			}
		}
		start = time.Now()
		wg.Wait()
		t.Logf("consumed %d in %v", total, time.Since(start))
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if len(done) != total {
			t.Fatalf("%d messages completed; want %d", len(done), total)
		}
		perNode := map[byte]int{}
		for _, who := range done {
			perNode[who[0]]++
		}
		t.Logf("completed per node: A %d, B %d", perNode['A'], perNode['B'])
		for _, s := range []*jsc2d.Store{a, b} {
			eventually(t, "every node sees the queue empty and the feedback", func() bool {
				c, err1 := s.Pending(ctx, "q")
				n, err2 := s.PendingFeedback(ctx)
				return err1 == nil && err2 == nil && c.Total() == 0 && n == total
			})
		}
	})

	t.Run("BackgroundExpiry", func(t *testing.T) {
		// Real clock, background sweepers on both nodes: a lock expiry
		// wakes a watcher without any Sweep call, and a TTL expiry is
		// dead-lettered (once) by the lease holder.
		a, b := twoNodes(t, js, c2d.Config{LockDuration: 200 * time.Millisecond})
		if _, err := a.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "lock"}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B sees the message", func() bool { c, _ := b.Pending(ctx, "d"); return c.Enqueued == 1 })
		if _, ok, err := a.Lock(ctx, "d"); err != nil || !ok {
			t.Fatalf("Lock: %v %v", ok, err)
		}
		eventually(t, "B sees the lock", func() bool { c, _ := b.Pending(ctx, "d"); return c.Locked == 1 })
		ch, stop := b.Watch("d")
		defer stop()
		wait(t, ch, "lock expiry on B")
		if m, ok, err := b.Lock(ctx, "d"); err != nil || !ok || m.DeliveryCount != 0 {
			t.Fatalf("Lock after expiry: %+v %v %v", m, ok, err)
		}
		if _, err := b.Enqueue(ctx, "e", c2d.NewMessage{MessageID: "ttl", Ack: c2d.AckFull, ExpiresAt: time.Now().Add(300 * time.Millisecond)}); err != nil {
			t.Fatal(err)
		}
		fb, stopFb := a.WatchFeedback()
		defer stopFb()
		wait(t, fb, "expiry feedback")
		eventually(t, "expired message dead-lettered", func() bool {
			n, _ := a.PendingFeedback(ctx)
			return n == 1
		})
		batch, ok, err := a.TakeFeedback(ctx, 10)
		if err != nil || !ok || len(batch.Records) != 1 || batch.Records[0].Status != c2d.StatusExpired {
			t.Fatalf("TakeFeedback = %+v, %v, %v; want one Expired", batch, ok, err)
		}
	})
}

// bucketOf recovers a store's bucket for reopening it in a test.
func bucketOf(t *testing.T, s *jsc2d.Store) string {
	t.Helper()
	return s.Bucket()
}

func TestServerGone(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv.ClientURL())
	natstest.WaitJetStream(t, nc)
	js := natstest.JetStream(t, nc)
	ctx := context.Background()
	s := open(t, js, jsc2d.Options{Bucket: uniqueBucket(), Timeout: 500 * time.Millisecond})
	defer s.Close()
	if _, err := s.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "x"}); err != nil {
		t.Fatal(err)
	}
	m, ok, err := s.Lock(ctx, "d")
	if err != nil || !ok {
		t.Fatalf("Lock: %v %v", ok, err)
	}
	start := time.Now()
	srv.Shutdown()
	srv.WaitForShutdown()
	t.Logf("shutdown took %v", time.Since(start))
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"enqueue", func() error { _, err := s.Enqueue(ctx, "d", c2d.NewMessage{}); return err }},
		{"complete", func() error { return s.Complete(ctx, "d", m.LockToken) }},
		{"purge", func() error { _, err := s.Purge(ctx, "d"); return err }},
		{"open", func() error {
			_, err := jsc2d.Open(ctx, js, jsc2d.Options{Bucket: uniqueBucket(), Timeout: 500 * time.Millisecond})
			return err
		}},
	} {
		start := time.Now()
		err := tc.call()
		took := time.Since(start)
		if err == nil {
			t.Errorf("%s with the server gone: no error", tc.name)
		}
		if took > 5*time.Second {
			t.Errorf("%s took %v; want a bounded failure", tc.name, took)
		}
		t.Logf("%s: %v after %v", tc.name, err, took.Round(time.Millisecond))
	}
	start = time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Close took %v with the server gone", took)
	}
}

func TestOrphanBodies(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()
	s := open(t, js, jsc2d.Options{Bucket: uniqueBucket(), InlineBodyBytes: -1, Config: c2d.Config{ManualSweep: true}})
	defer s.Close()
	orphan, err := s.PutOrphanBody(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "kept", Body: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	if err := s.SweepOrphans(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !s.BodyExists(ctx, orphan) {
		t.Fatal("a young orphan was deleted")
	}
	if err := s.SweepOrphans(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if s.BodyExists(ctx, orphan) {
		t.Fatal("orphan body still stored after the sweep")
	}
	m, ok, err := s.Lock(ctx, "d")
	if err != nil || !ok || string(m.Body) != "kept" {
		t.Fatalf("Lock after the orphan sweep = %q, %v, %v", m.Body, ok, err)
	}
	// Settling deletes the body at once.
	if err := s.Complete(ctx, "d", m.LockToken); err != nil {
		t.Fatal(err)
	}
	if err := s.SweepOrphans(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// TestServerRestart restarts the server under two stores: once NATS is
// back they work again, and a watch on one node hears of an enqueue on the
// other (the bucket watcher resumed).
func TestServerRestart(t *testing.T) {
	dir := t.TempDir()
	srv, err := natstest.StartServer(dir)
	if err != nil {
		t.Fatal(err)
	}
	port := srv.Addr().(*net.TCPAddr).Port
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			srv.Shutdown()
		}
	})
	connect := func() jetstream.JetStream {
		nc := natstest.Connect(t, srv.ClientURL())
		natstest.WaitJetStream(t, nc)
		js := natstest.JetStream(t, nc)
		return js
	}
	ctx := context.Background()
	bucket := uniqueBucket()
	a := open(t, connect(), jsc2d.Options{Bucket: bucket, NodeID: "A", Timeout: time.Second})
	defer a.Close()
	b := open(t, connect(), jsc2d.Options{Bucket: bucket, NodeID: "B", Timeout: time.Second})
	defer b.Close()
	if _, err := a.Enqueue(ctx, "d", c2d.NewMessage{MessageID: "before"}); err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()
	srv2, err := natstest.StartServer(dir, func(o *server.Options) { o.Port = port })
	if err != nil {
		t.Fatal(err)
	}
	restarted = true
	t.Cleanup(srv2.Shutdown)

	ch, stop := a.Watch("e")
	defer stop()
	eventually(t, "B can enqueue again", func() bool {
		_, err := b.Enqueue(ctx, "e", c2d.NewMessage{MessageID: "after"})
		return err == nil
	})
	wait(t, ch, "enqueue on B after the restart")
	m, ok, err := a.Lock(ctx, "e")
	if err != nil || !ok || m.MessageID != "after" {
		t.Fatalf("Lock on A = %+v, %v, %v", m, ok, err)
	}
	// B may not have seen "d" before the server went down: its Lock
	// answers from what its watcher delivered, which catches up.
	var got c2d.Message
	eventually(t, "B locks the message from before the restart", func() bool {
		m, ok, err := b.Lock(ctx, "d")
		if err != nil || !ok {
			return false
		}
		got = m
		return true
	})
	if got.MessageID != "before" {
		t.Fatalf("message from before the restart: %+v", got)
	}
}
