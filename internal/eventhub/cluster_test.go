package eventhub_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	"github.com/nats-io/nats.go"

	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/eventhub"
	"amqphub/internal/hub"
	"amqphub/internal/natstest"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
	"amqphub/internal/server"
	"amqphub/store/partlog/seglog"
)

// ehNode is a hub node whose Event-Hub-compatible endpoint runs in
// cluster mode, with that endpoint's REST routes.
type ehNode struct {
	s    *server.Server
	nc   *nats.Conn
	rest string // base URL of the endpoint's REST routes
}

// startEHNodes starts n nodes on one embedded NATS server, reading one
// shared telemetry log (the cluster's log is shared by every node).
func startEHNodes(t *testing.T, n int, cfg eventhub.Config) []*ehNode {
	t.Helper()
	ns := natstest.RunServer(t)
	urls := make([]string, n)
	for i := range urls {
		urls[i] = ns.ClientURL()
	}
	return startEHNodesOn(t, urls, 1, cfg)
}

// startEHNodesOn starts one node per NATS URL, with buckets of the given
// replication.
func startEHNodesOn(t *testing.T, urls []string, replicas int, cfg eventhub.Config) []*ehNode {
	t.Helper()
	n := len(urls)
	lg, err := seglog.Open(t.TempDir(), seglog.Options{Partitions: 4, Logger: amqptest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	authority, err := auth.New(auth.Config{HostName: "localhost", Policies: auth.DefaultPolicies(), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*ehNode
	for i := range n {
		nc := natstest.Connect(t, urls[i])
		js := natstest.JetStream(t, nc)
		rh, err := rest.New(rest.Config{Registry: reg, Auth: authority, Logger: amqptest.TestLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		env := &hub.Env{
			HubName:      "amqphub",
			HostName:     "localhost",
			EventHubName: "amqphub",
			InMemory:     true,
			REST:         rh,
			Log:          lg,
			Logger:       amqptest.TestLogger(t),
			Cluster:      &hub.Cluster{NodeID: fmt.Sprintf("node%d", i), Conn: nc, JS: js, Replicas: replicas, Prefix: "AMQPHUB"},
		}
		mod, err := eventhub.Setup(env, cfg)
		if err != nil {
			t.Fatalf("setup node %d: %v", i, err)
		}
		t.Cleanup(func() { mod.Close() })
		// Registered after the module's cleanup, so the hub stops first.
		s := server.StartTest(t, func(o *server.Options) { o.Endpoints = mod.Endpoints })
		hs := httptest.NewServer(rh)
		t.Cleanup(hs.Close)
		nodes = append(nodes, &ehNode{s: s, nc: nc, rest: hs.URL})
	}
	return nodes
}

func (n *ehNode) do(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, n.rest+path+"?api-version=2021-04-12", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", ownerToken(t, "localhost"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func epochOf(e int64) *int64 { return &e }

// receiverOn attaches a reader of partition 0 of group on a node.
func receiverOn(t *testing.T, ctx context.Context, n *ehNode, group string, o rcvOpts) (*goamqp.Receiver, error) {
	t.Helper()
	sess := newSession(t, dialOwner(t, n.s))
	return newReceiver(ctx, sess, partitionAddr(n.s, group, 0), o)
}

// waitDetached waits until r's link is detached by the hub and returns
// the error.
func waitDetached(t *testing.T, ctx context.Context, r *goamqp.Receiver) error {
	t.Helper()
	for {
		_, err := r.Receive(ctx, nil)
		if err != nil {
			return err
		}
	}
}

// TestClusterEpochs: an epoch on one node takes the partition from a
// lower epoch on another, and refuses lower epochs on every node.
func TestClusterEpochs(t *testing.T) {
	nodes := startEHNodes(t, 2, eventhub.Config{})
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	r1, err := receiverOn(t, ctx, a, "$Default", rcvOpts{epoch: epochOf(1), name: "one"})
	if err != nil {
		t.Fatalf("epoch 1 on A: %v", err)
	}
	if _, err := receiverOn(t, ctx, b, "$Default", rcvOpts{epoch: epochOf(2), name: "two"}); err != nil {
		t.Fatalf("epoch 2 on B: %v", err)
	}
	err = waitDetached(t, ctx, r1)
	if condOf(err) != goamqp.ErrCondStolen || !strings.Contains(err.Error(), "receiver 'two' with epoch 2 took over partition 0 of consumer group $Default; this receiver (epoch 1) is disconnected") {
		t.Fatalf("epoch 1 on A after epoch 2 on B: %v, want %s naming the new owner", err, goamqp.ErrCondStolen)
	}
	for _, tc := range []struct {
		name string
		node *ehNode
		o    rcvOpts
		desc string
	}{
		{"epoch 1 on B", b, rcvOpts{epoch: epochOf(1)}, "with the higher epoch 2 owns partition 0"},
		{"epoch 1 on A", a, rcvOpts{epoch: epochOf(1)}, "with the higher epoch 2 owns partition 0"},
		{"no epoch on A", a, rcvOpts{}, "without epoch is refused: receiver 'two' with epoch 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := receiverOn(t, ctx, tc.node, "$Default", tc.o)
			if err == nil {
				r.Close(ctx)
				t.Fatal("accepted while epoch 2 holds the partition")
			}
			if condOf(err) != goamqp.ErrCondStolen || !strings.Contains(err.Error(), tc.desc) {
				t.Fatalf("%v, want %s mentioning %q", err, goamqp.ErrCondStolen, tc.desc)
			}
		})
	}
	// Equal epochs take over too, here back on A.
	if _, err := receiverOn(t, ctx, a, "$Default", rcvOpts{epoch: epochOf(2), name: "again"}); err != nil {
		t.Fatalf("epoch 2 on A: %v", err)
	}
}

// TestClusterReaderLimit: the five readers without epoch are counted over
// every node.
func TestClusterReaderLimit(t *testing.T) {
	nodes := startEHNodes(t, 2, eventhub.Config{})
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var first *goamqp.Receiver
	for i, n := range []*ehNode{a, b, a, b, a} {
		r, err := receiverOn(t, ctx, n, "$Default", rcvOpts{name: fmt.Sprint("r", i)})
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		if first == nil {
			first = r
		}
	}
	for _, n := range []*ehNode{a, b} {
		r, err := receiverOn(t, ctx, n, "$Default", rcvOpts{name: "sixth"})
		if err == nil {
			r.Close(ctx)
			t.Fatal("a sixth reader was accepted")
		}
		if condOf(err) != goamqp.ErrCondResourceLimitExceeded || !strings.Contains(err.Error(), "'r0', 'r1', 'r2', 'r3', 'r4'") {
			t.Fatalf("sixth reader: %v, want %s listing the five", err, goamqp.ErrCondResourceLimitExceeded)
		}
	}
	// A reader leaving frees its place for any node.
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := receiverOn(t, ctx, b, "$Default", rcvOpts{name: "sixth"})
		if err == nil {
			r.Close(ctx)
			break
		}
		if condOf(err) != goamqp.ErrCondResourceLimitExceeded || time.Now().After(deadline) {
			t.Fatalf("after a reader left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClusterNodeGone: the readers of a node that died stop holding their
// partition when their lease expires.
func TestClusterNodeGone(t *testing.T) {
	const heartbeat = 500 * time.Millisecond
	nodes := startEHNodes(t, 2, eventhub.Config{LeaseHeartbeat: heartbeat})
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := receiverOn(t, ctx, a, "$Default", rcvOpts{epoch: epochOf(7), name: "on-a"}); err != nil {
		t.Fatal(err)
	}
	// A dies: first its NATS connection, so nothing it does after reaches
	// the cluster, then everything else.
	a.nc.Close()
	a.s.Close()
	start := time.Now()
	r, err := receiverOn(t, ctx, b, "$Default", rcvOpts{name: "on-b"})
	if err == nil {
		r.Close(ctx)
		t.Fatal("a reader without epoch was accepted at once: the dead node's lease did not hold")
	}
	if condOf(err) != goamqp.ErrCondStolen {
		t.Fatalf("while the dead node's lease holds: %v", err)
	}
	for {
		r, err := receiverOn(t, ctx, b, "$Default", rcvOpts{name: "on-b"})
		if err == nil {
			r.Close(ctx)
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the dead node's lease still holds after %v: %v", time.Since(start), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Three heartbeats, plus slack for a busy machine.
	if took := time.Since(start); took > 3*heartbeat+3*time.Second {
		t.Errorf("the lease expired after %v, want about three heartbeats of %v", took, heartbeat)
	}
}

// TestClusterConsumerGroups: groups created or deleted on one node are
// seen by every node, the limit counts them all, and deleting a group
// detaches its readers on every node.
func TestClusterConsumerGroups(t *testing.T) {
	nodes := startEHNodes(t, 2, eventhub.Config{MaxConsumerGroups: 3})
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code, body := a.do(t, "PUT", "/eventHubs/consumerGroups/Alpha"); code != 201 {
		t.Fatalf("create on A: %d %s", code, body)
	}
	if code, body := b.do(t, "PUT", "/eventHubs/consumerGroups/alpha"); code != 200 || !strings.Contains(body, `"Alpha"`) {
		t.Fatalf("create again on B: %d %s, want 200 with the existing group", code, body)
	}
	code, body := b.do(t, "GET", "/eventHubs/consumerGroups")
	if names := groupNames(t, []byte(body)); code != 200 || !slices.Equal(names, []string{"$Default", "Alpha"}) {
		t.Fatalf("list on B: %d %v", code, names)
	}
	// A reader on B of the group made on A, at once.
	r, err := receiverOn(t, ctx, b, "alpha", rcvOpts{})
	if err != nil {
		t.Fatalf("reader on B of the group created on A: %v", err)
	}
	if code, body := b.do(t, "PUT", "/eventHubs/consumerGroups/beta"); code != 201 {
		t.Fatalf("create beta on B: %d %s", code, body)
	}
	if code, body := a.do(t, "PUT", "/eventHubs/consumerGroups/gamma"); code != 403 || !strings.Contains(body, "IotHubQuotaExceeded") {
		t.Fatalf("a fourth group on A: %d %s, want 403", code, body)
	}
	if code, body := a.do(t, "DELETE", "/eventHubs/consumerGroups/Alpha"); code != 204 {
		t.Fatalf("delete on A: %d %s", code, body)
	}
	if err := waitDetached(t, ctx, r); condOf(err) != goamqp.ErrCondNotFound {
		t.Fatalf("reader on B of the group deleted on A: %v, want %s", err, goamqp.ErrCondNotFound)
	}
	if code, _ := b.do(t, "GET", "/eventHubs/consumerGroups/alpha"); code != 404 {
		t.Errorf("get on B after the delete on A: %d, want 404", code)
	}
	if code, body := b.do(t, "PUT", "/eventHubs/consumerGroups/gamma"); code != 201 {
		t.Fatalf("create gamma on B after the delete: %d %s", code, body)
	}
}

// TestClusterGroupLimitConcurrent: creates racing on two nodes never
// exceed the limit.
func TestClusterGroupLimitConcurrent(t *testing.T) {
	nodes := startEHNodes(t, 2, eventhub.Config{MaxConsumerGroups: 5})
	racingCreates(t, nodes, 12, 4)
}

// racingCreates creates n groups at once, alternating nodes, and checks
// that exactly want were created and the rest refused for the limit.
func racingCreates(t *testing.T, nodes []*ehNode, n, want int) {
	t.Helper()
	codes := make(chan int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := nodes[i%len(nodes)].do(t, "PUT", fmt.Sprintf("/eventHubs/consumerGroups/race%d", i))
			if code != 201 && code != 403 {
				t.Errorf("create race%d: %d %s", i, code, body)
			}
			codes <- code
		}()
	}
	wg.Wait()
	close(codes)
	created := 0
	for c := range codes {
		if c == 201 {
			created++
		}
	}
	if created != want {
		t.Errorf("%d groups created by racing creates, want %d", created, want)
	}
	for _, nd := range nodes {
		code, body := nd.do(t, "GET", "/eventHubs/consumerGroups")
		if names := groupNames(t, []byte(body)); code != 200 || len(names) != want+1 {
			t.Errorf("list: %d %v, want $Default and %d groups", code, names, want)
		}
	}
}

// TestClusterReplicated: on a three-server NATS cluster with replicated
// buckets (where conflicts carry another error code and reads may come
// from a replica), epochs and the group limit hold across nodes connected
// to different servers.
func TestClusterReplicated(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nats-server processes")
	}
	c := natstest.StartCluster(t, 3)
	nodes := startEHNodesOn(t, []string{c.Nodes[0].ClientURL(), c.Nodes[1].ClientURL()}, 3, eventhub.Config{MaxConsumerGroups: 4})
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r1, err := receiverOn(t, ctx, a, "$Default", rcvOpts{epoch: epochOf(1), name: "one"})
	if err != nil {
		t.Fatalf("epoch 1 on A: %v", err)
	}
	if _, err := receiverOn(t, ctx, b, "$Default", rcvOpts{epoch: epochOf(2), name: "two"}); err != nil {
		t.Fatalf("epoch 2 on B: %v", err)
	}
	if err := waitDetached(t, ctx, r1); condOf(err) != goamqp.ErrCondStolen {
		t.Fatalf("epoch 1 on A after epoch 2 on B: %v", err)
	}
	if _, err := receiverOn(t, ctx, a, "$Default", rcvOpts{epoch: epochOf(1)}); condOf(err) != goamqp.ErrCondStolen {
		t.Fatalf("epoch 1 on A while epoch 2 holds: %v", err)
	}
	racingCreates(t, nodes, 8, 3)
}
