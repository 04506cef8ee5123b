package jstwins_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/twins"
	"amqphub/store/twins/jstwins"
)

// TestCluster runs two hub nodes on a 3-node NATS cluster with an R3
// bucket: concurrent writes from both nodes (compare-and-set conflicts are
// reported differently by replicated streams), desired changes announced
// across nodes, and both survive the loss of the NATS node one of them is
// connected to.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	c := natstest.StartCluster(t, 3)
	urls := make([]string, len(c.Nodes))
	for i, nd := range c.Nodes {
		urls[i] = nd.ClientURL()
	}
	// Node A prefers NATS node 0, node B NATS node 1.
	connect := func(order ...int) jetstream.JetStream {
		var list []string
		for _, i := range order {
			list = append(list, urls[i])
		}
		nc := natstest.Connect(t, strings.Join(list, ","), nats.DontRandomize())
		js := natstest.JetStream(t, nc)
		return js
	}
	bucket := uniqueBucket()
	a := open(t, connect(0, 1, 2), jstwins.Options{Bucket: bucket, Replicas: 3, Timeout: 15 * time.Second})
	b := open(t, connect(1, 2, 0), jstwins.Options{Bucket: bucket, Replicas: 3, Timeout: 15 * time.Second})
	var onA recorder
	defer a.SubscribeDesired(onA.add)()

	id := twins.ID{DeviceID: "dev"}
	round := func(name string) {
		t.Helper()
		const each = 10
		var wg sync.WaitGroup
		errs := make(chan error, 2*each)
		for si, s := range []*jstwins.Store{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					if _, err := s.PatchReported(ctx, id, "g", map[string]any{fmt.Sprintf("%s_%d_%d", name, si, i): i}); err != nil {
						errs <- fmt.Errorf("node %d: %w", si, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("%s: %v", name, err)
		}
		tw, err := b.Update(ctx, id, "g", twins.Update{Desired: map[string]any{name: true}})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		waitFor(t, name+": A to announce B's desired write", func() bool { return lastVersion(&onA) == tw.Desired.Version })
		waitFor(t, name+": A to read every write", func() bool {
			got, err := a.Get(ctx, id, "g")
			return err == nil && got.Version == tw.Version
		})
		got, err := a.Get(ctx, id, "g")
		if err != nil {
			t.Fatal(err)
		}
		for si := range 2 {
			for i := range each {
				if _, ok := got.Reported.Values[fmt.Sprintf("%s_%d_%d", name, si, i)]; !ok {
					t.Errorf("%s: node %d's write %d lost", name, si, i)
				}
			}
		}
	}
	round("healthy")
	// A's NATS node goes (and with it, maybe, the stream's leader and A's
	// watch consumer): A reconnects to node 1; calls fail with
	// ErrUnavailable meanwhile, then work again, and A's watch recovers.
	c.Kill(0)
	waitFor(t, "A to be usable again", func() bool {
		_, err := a.PatchReported(ctx, id, "g", map[string]any{"probe": 1})
		return err == nil
	})
	round("without_n1")
}
