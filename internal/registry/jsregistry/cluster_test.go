package jsregistry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"amqphub/internal/natstest"
	"amqphub/internal/registry"
)

// TestCluster runs one Store per node of a 3-node cluster on an R3 bucket
// (whose revision conflicts carry another error code than R1's), then
// kills the node the first Store is connected to.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster and waits out a leader election")
	}
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	bucket := freshBucket()
	stores := make([]*Store, len(c.Nodes))
	for i, nd := range c.Nodes {
		js := natstest.JetStream(t, natstest.Connect(t, nd.ClientURL()))
		octx, cancel := context.WithTimeout(ctx, 20*time.Second)
		s, err := Open(octx, js, Options{Bucket: bucket, Replicas: 3, Timeout: 3 * time.Second})
		cancel()
		if err != nil {
			t.Fatalf("Open on %s: %v", nd.Name, err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}

	d, err := stores[0].CreateDevice(ctx, sasDevice("c1"))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range stores {
		eventually(t, fmt.Sprintf("device on store %d", i), func() bool {
			got, err := s.GetDevice(ctx, "c1")
			return err == nil && got.ETag == d.ETag
		})
	}
	if _, err := stores[1].CreateDevice(ctx, sasDevice("c1")); !errors.Is(err, registry.ErrDeviceAlreadyExists) {
		t.Fatalf("duplicate create on R3 = %v", err)
	}

	// All three replace with the same etag: one wins.
	var wg sync.WaitGroup
	errs := make([]error, len(stores))
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := d
			u.StatusReason = fmt.Sprint("store ", i)
			_, errs[i] = s.ReplaceDevice(ctx, u, d.ETag)
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		if err == nil {
			wins++
		} else if !errors.Is(err, registry.ErrPreconditionFailed) {
			t.Fatalf("conditional replace on R3: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d winners with one etag on R3 (%v)", wins, errs)
	}
	if err := stores[2].DeleteDevice(ctx, "c1", d.ETag); !errors.Is(err, registry.ErrPreconditionFailed) {
		t.Fatalf("delete with a stale etag on R3 = %v", err)
	}

	// Kill store 0's server: its reads go on; writes through another node
	// succeed once the bucket has a leader, and store 0 sees them after
	// its client reconnected to a surviving node.
	c.Kill(0)
	killed := time.Now()
	if _, err := stores[0].GetDevice(ctx, "c1"); err != nil {
		t.Fatalf("read with the node down: %v", err)
	}
	var after registry.Device
	deadline := time.Now().Add(30 * time.Second)
	for {
		after, err = stores[1].CreateDevice(ctx, sasDevice("after-kill"))
		if err == nil {
			break
		}
		if !errors.Is(err, registry.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("create after the kill: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // poll: the bucket elects a new leader
	}
	t.Logf("first write after the kill succeeded after %v", time.Since(killed).Round(time.Millisecond))
	deadline = time.Now().Add(30 * time.Second)
	for {
		got, err := stores[0].GetDevice(ctx, "after-kill")
		if err == nil && got.ETag == after.ETag {
			t.Logf("store 0 saw it %v after the kill", time.Since(killed).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store 0 did not see a write made after its server died: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll: reconnect and watch restart
	}
}
