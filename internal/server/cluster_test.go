package server

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/natstest"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
)

// startClusterPair starts two in-process hub nodes on one embedded NATS
// JetStream server (R1): node A and node B share every store.
func startClusterPair(t *testing.T) (a, b *Server) {
	t.Helper()
	nc := natstest.StartCluster(t, 3)
	mod := func(id string) func(*Options) {
		return func(o *Options) {
			url := nc.Nodes[0].ClientURL()
			if id == "B" {
				url = nc.Nodes[1].ClientURL()
			}
			o.Cluster = ClusterOptions{URLs: url, NodeID: id, Replicas: 3}
			o.Devices = []DeviceConfig{{ID: "dev1", PrimaryKey: devKey, SecondaryKey: devKey}}
		}
	}
	return StartTest(t, mod("A")), StartTest(t, mod("B"))
}

const devKey = "Y2x1c3Rlci10ZXN0LWRldmljZS1rZXktMDEyMzQ1Njc4OQ=="

// TestClusterC2DFeedback: a C2D message sent on node B is received and
// completed by the device on node A, and its feedback reaches the service
// on node B.
func TestClusterC2DFeedback(t *testing.T) {
	a, b := startClusterPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dev, err := client.NewDeviceClient(fmt.Sprintf("HostName=localhost;DeviceId=dev1;SharedAccessKey=%s", devKey),
		&client.DeviceOptions{Address: "amqp://" + a.AMQPAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	svc, err := client.NewServiceClient(fmt.Sprintf("HostName=localhost;SharedAccessKeyName=%s;SharedAccessKey=%s", auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
		&client.ServiceOptions{Address: "amqp://" + b.AMQPAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	// The feedback receiver waits before any feedback exists, as the
	// SDKs' do: node B must be woken by a record node A wrote.
	type fbResult struct {
		b   *client.FeedbackBatch
		err error
	}
	fbc := make(chan fbResult, 1)
	// Attach the feedback link first: a receive that finds nothing.
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := svc.ReceiveFeedback(pctx); err == nil {
		t.Fatal("feedback before any message was sent")
	}
	pcancel()
	go func() {
		b, err := svc.ReceiveFeedback(ctx)
		fbc <- fbResult{b, err}
	}()
	if err := svc.SendC2D(ctx, "dev1", &client.Message{MessageID: "m1", Body: []byte("hello")}, &client.C2DOptions{Ack: client.AckFull}); err != nil {
		t.Fatal(err)
	}
	m, err := dev.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "m1" || string(m.Body) != "hello" {
		t.Fatalf("received %q %q", m.MessageID, m.Body)
	}
	if err := m.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-fbc
	fb, err := r.b, r.err
	if err != nil {
		t.Fatal(err)
	}
	if len(fb.Records) != 1 || fb.Records[0].OriginalMessageID != "m1" || fb.Records[0].StatusCode != "Success" {
		t.Fatalf("feedback %+v", fb.Records)
	}
	if err := fb.Complete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestClusterUnreachable: a node whose NATS cluster cannot be reached
// fails to start within its connect timeout, naming the cause.
func TestClusterUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	start := time.Now()
	_, err = Start(Options{
		InMemory: true, AMQPAddr: "127.0.0.1:0", AMQPSAddr: "off", HTTPSAddr: "off",
		Cluster: ClusterOptions{URLs: "nats://user:secret@" + addr, ConnectTimeout: time.Second},
	})
	if err == nil {
		t.Fatal("a node started without its NATS cluster")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("start failed after %v, want about the 1 s connect timeout", d)
	}
	if msg := err.Error(); !strings.Contains(msg, "JetStream") || strings.Contains(msg, "secret") {
		t.Fatalf("error %q: want the cause, without the password", msg)
	}
}

// TestClusterStreams: a node creates its telemetry streams with the
// configured retention and its buckets under the cluster prefix.
func TestClusterStreams(t *testing.T) {
	ns := natstest.RunServer(t)
	StartTest(t, func(o *Options) {
		o.Cluster = ClusterOptions{URLs: ns.ClientURL(), Prefix: "HUBX"}
		o.Partitions = 2
		o.Retention = 48 * time.Hour
		o.RetentionBytes = 1 << 20
	})
	nc := natstest.Connect(t, ns.ClientURL())
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for p := range 2 {
		st, err := js.Stream(ctx, fmt.Sprintf("HUBX_telemetry_%d", p))
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		if c.MaxAge != 48*time.Hour || c.MaxBytes != 1<<20 || c.Replicas != 1 {
			t.Fatalf("partition %d stream: max age %v, max bytes %d, replicas %d", p, c.MaxAge, c.MaxBytes, c.Replicas)
		}
	}
	for _, b := range []string{"registry", "twins", "c2d", "eventhub", "ehowners", "presence"} {
		if _, err := js.KeyValue(ctx, "HUBX_"+b); err != nil {
			t.Errorf("bucket HUBX_%s: %v", b, err)
		}
	}
}

// TestClusterReplicasApplied: a node started with another replica count
// applies it to every stream and bucket that an earlier node created.
func TestClusterReplicasApplied(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	start := func(replicas int) {
		s := StartTest(t, func(o *Options) {
			o.Cluster = ClusterOptions{URLs: c.URLs(), Replicas: replicas, Prefix: "REPL"}
			o.Partitions = 2
		})
		s.Close()
	}
	nc := natstest.Connect(t, c.URLs())
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	replicas := func() map[string]int {
		got := map[string]int{}
		for si := range js.ListStreams(ctx).Info() {
			got[si.Config.Name] = si.Config.Replicas
		}
		return got
	}
	start(1)
	first := replicas()
	// Telemetry partitions, the C2D bodies and the six buckets.
	if len(first) != 2+1+6 {
		t.Fatalf("streams after the first node: %v", first)
	}
	start(3)
	for name, r := range replicas() {
		if r != 3 {
			t.Errorf("stream %s has %d replicas after a node with 3 started (%d before)", name, r, first[name])
		}
	}
}

// TestClusterPresence: a device connected to node A reads as Connected
// through node B, Disconnected once it leaves, and Disconnected again when
// node A stops sending heartbeats (a node that died).
func TestClusterPresence(t *testing.T) {
	ns := natstest.RunServer(t)
	mod := func(id string) func(*Options) {
		return func(o *Options) {
			o.Cluster = ClusterOptions{URLs: ns.ClientURL(), NodeID: id, PresenceHeartbeat: 100 * time.Millisecond}
			o.Devices = []DeviceConfig{{ID: "dev1", PrimaryKey: devKey, SecondaryKey: devKey}}
		}
	}
	a, b := StartTest(t, mod("A")), StartTest(t, mod("B"))
	stateOnB := func() registry.ConnectionState {
		var st registry.ConnectionState
		var updated, activity time.Time
		var n int
		b.livePresence(context.Background(), "dev1", "", rest.LiveFields{
			ConnectionState: &st, ConnectionStateUpdatedTime: &updated, LastActivityTime: &activity, CloudToDeviceMessageCount: &n,
		})
		return st
	}
	waitState := func(want registry.ConnectionState, why string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for stateOnB() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: node B still says %q, want %q", why, stateOnB(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if st := stateOnB(); st != "" {
		t.Fatalf("a device that never connected: %q", st)
	}
	connect := func() *client.DeviceClient {
		dev, err := client.NewDeviceClient(fmt.Sprintf("HostName=localhost;DeviceId=dev1;SharedAccessKey=%s", devKey),
			&client.DeviceOptions{Address: "amqp://" + a.AMQPAddr})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := dev.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		return dev
	}
	dev := connect()
	waitState(registry.Connected, "connected to node A")
	dev.Close()
	waitState(registry.Disconnected, "disconnected from node A")
	dev = connect()
	defer dev.Close()
	waitState(registry.Connected, "connected again")
	// Node A dies: its heartbeats stop, its record stays.
	a.presence.cancel()
	a.presence.wg.Wait()
	waitState(registry.Disconnected, "node A silent for three heartbeats")
}
