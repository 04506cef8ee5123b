package jsc2d_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"amqphub/internal/natstest"
	"amqphub/store/c2d"
	"amqphub/store/c2d/jsc2d"
)

// TestCluster runs one store per node of a real 3-node cluster on R3
// buckets: concurrent consumers on every node (replicated streams report
// CAS conflicts with their own error code), then a node killed, after
// which the other two go on and lose nothing acknowledged.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node nats-server cluster")
	}
	c := natstest.StartCluster(t, 3)
	ctx := context.Background()
	bucket := uniqueBucket()
	stores := make([]*jsc2d.Store, len(c.Nodes))
	for i, nd := range c.Nodes {
		js := natstest.JetStream(t, natstest.Connect(t, nd.ClientURL()))
		stores[i] = open(t, js, jsc2d.Options{
			Bucket: bucket, Replicas: 3, NodeID: nd.Name, Timeout: 4 * time.Second,
			Config: c2d.Config{MaxDepth: 100},
		})
		t.Cleanup(func() { _ = stores[i].Close() })
	}

	const total = 60
	for i := range total {
		if _, err := stores[i%3].Enqueue(ctx, "q", c2d.NewMessage{MessageID: fmt.Sprint(i), Ack: c2d.AckPositive}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range stores {
		eventually(t, "every node sees every message", func() bool {
			n, err := s.Pending(ctx, "q")
			return err == nil && n.Enqueued == total
		})
	}
	var mu sync.Mutex
	done := map[uint64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for _, s := range stores {
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					m, ok, err := s.Lock(ctx, "q")
					if err != nil || !ok {
						if err != nil {
							errs <- err
						}
						return
					}
					if err := s.Complete(ctx, "q", m.LockToken); err != nil {
						errs <- err
						return
					}
					mu.Lock()
					if done[m.Seq] {
						errs <- fmt.Errorf("message %d completed twice", m.Seq)
					}
					done[m.Seq] = true
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(done) != total {
		t.Fatalf("%d completed; want %d", len(done), total)
	}

	// Kill the third server; the stores on the other two keep working once
	// the bucket has a leader again.
	c.Kill(2)
	var acked []uint64
	failed := 0
	deadline := time.Now().Add(30 * time.Second)
	for len(acked) < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d enqueues acknowledged within 30 s of the kill", len(acked))
		}
		seq, err := stores[len(acked)%2].Enqueue(ctx, "after", c2d.NewMessage{MessageID: fmt.Sprint(len(acked)), Body: []byte("b")})
		if err != nil {
			if failed++; failed == 1 {
				t.Logf("enqueue during failover: %v", err)
			}
			time.Sleep(20 * time.Millisecond) // pace the retries while a leader is elected
			continue
		}
		acked = append(acked, seq)
	}
	t.Logf("%d enqueues failed during the failover", failed)
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i, want := range acked {
		m, err := c2d.Next(nctx, stores[(i+1)%2], "after")
		if err != nil || m.Seq != want || string(m.Body) != "b" {
			t.Fatalf("message %d after the kill: seq %d body %q, %v; want seq %d", i, m.Seq, m.Body, err, want)
		}
		if err := stores[i%2].Complete(nctx, "after", m.LockToken); err != nil {
			t.Fatalf("complete %d: %v", i, err)
		}
	}
}
