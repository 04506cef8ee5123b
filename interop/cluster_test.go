package interop

import (
	"context"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/natstest"
	"amqphub/internal/testutil"
	"amqphub/internal/tlsutil"
	jslog "amqphub/store/partlog/jetstream"
)

// hubNode is one amqphub process of a cluster test.
type hubNode struct {
	name, ip  string
	plainAddr string
	devKeys   map[string]string
	cmd       *exec.Cmd
	waited    chan struct{}
	stderr    *testutil.LockedBuffer
}

// clusterFixture is a 3-node NATS cluster (separate nats-server
// processes) and two amqphub nodes (separate processes) on it, each on
// its own 127.x.y.z address with the well-known ports 5671 and 443 that
// the Node SDKs dial.
type clusterFixture struct {
	nats   *natstest.Cluster
	caFile string
	nodes  []*hubNode
	bin    string
	args   func(i int) []string
}

func randomLoopback() string {
	return fmt.Sprintf("127.%d.%d.%d", 1+mrand.IntN(250), mrand.IntN(250), 1+mrand.IntN(250))
}

func startClusterFixture(t *testing.T) *clusterFixture {
	t.Helper()
	bin, err := buildHub()
	if err != nil {
		t.Fatal(err)
	}
	f := &clusterFixture{bin: bin, nats: natstest.StartCluster(t, 3)}
	ips := []string{randomLoopback(), randomLoopback()}
	tlsDir := filepath.Join(t.TempDir(), "tls")
	if _, f.caFile, err = tlsutil.EnsureLocalCA(tlsDir, ips); err != nil {
		t.Fatal(err)
	}
	f.args = func(i int) []string {
		return []string{"serve",
			"--cluster", f.nats.URLs(),
			"--node-id", string(rune('A' + i)),
			"--host-name", ips[i],
			"--host-aliases", ips[1-i],
			"--amqp-addr", ips[i] + ":0",
			"--amqps-addr", ips[i] + ":5671",
			"--https-addr", ips[i] + ":443",
			"--tls-cert", filepath.Join(tlsDir, tlsutil.ServerCertFile),
			"--tls-key", filepath.Join(tlsDir, tlsutil.ServerKeyFile),
			"--replicas", "3",
			"--in-memory",
			"--log-level", "warn",
		}
	}
	for i := range ips {
		f.nodes = append(f.nodes, &hubNode{name: string(rune('A' + i)), ip: ips[i]})
		f.start(t, i)
	}
	return f
}

// start starts node i's process and waits for its banner.
func (f *clusterFixture) start(t *testing.T, i int) {
	t.Helper()
	n := f.nodes[i]
	n.cmd = exec.Command(f.bin, f.args(i)...)
	n.stderr = &testutil.LockedBuffer{}
	n.cmd.Stderr = n.stderr
	out, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.waited = make(chan struct{})
	cmd, waited := n.cmd, n.waited
	go func() { cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
		if t.Failed() {
			t.Logf("hub node %s stderr:\n%s", n.name, n.stderr.String())
		}
	})
	n.plainAddr, n.devKeys = readBanner(t, out)
	if n.plainAddr == "" {
		t.Fatalf("node %s printed no plain AMQP address; stderr:\n%s", n.name, n.stderr.String())
	}
}

// kill SIGKILLs node i.
func (f *clusterFixture) kill(t *testing.T, i int) {
	t.Helper()
	n := f.nodes[i]
	n.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-n.waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("node %s did not exit after SIGKILL", n.name)
	}
}

func (f *clusterFixture) deviceCS(node int, id string) string {
	return fmt.Sprintf("HostName=%s;DeviceId=%s;SharedAccessKey=%s", f.nodes[node].ip, id, f.nodes[node].devKeys[id])
}

func (f *clusterFixture) ehCS(node int) string {
	return fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=amqphub",
		f.nodes[node].ip, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey)
}

// TestCluster is issue 10's proof: a real 3-node NATS cluster and two
// amqphub nodes as separate processes. The official Node SDKs exchange
// telemetry, C2D with feedback, twin updates and a direct method with the
// device on node A and the service on node B; then, under load through an
// L4 balancer, one NATS node and one amqphub node are killed, clients
// fail over to the other node, and no acknowledged message is lost.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS cluster and two hub processes")
	}
	f := startClusterFixture(t)
	t.Run("NodeSDKs", func(t *testing.T) {
		RunNode(t, 4*time.Minute, Env(
			"NODE_EXTRA_CA_CERTS", f.caFile,
			"DEVICE_ID", "device1",
			"DEVICE_CS", f.deviceCS(0, "device1"),
			"SERVICE_CS", serviceCS(f.nodes[1].ip, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
			"EH_CS_A", f.ehCS(0),
			"EH_CS_B", f.ehCS(1),
		), "test/cluster.test.js")
	})
	t.Run("Faults", func(t *testing.T) { clusterFaults(t, f) })
}

// l4Proxy forwards each TCP connection to the first backend that accepts
// it, as an L4 balancer with health checks would: while node A lives every
// client reaches A; once it is gone, B.
type l4Proxy struct {
	ln       net.Listener
	backends []string
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func startProxy(t *testing.T, backends ...string) *l4Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &l4Proxy{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *l4Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

func (p *l4Proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *l4Proxy) forward(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	var b net.Conn
	for _, addr := range p.backends {
		var err error
		if b, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
	}
	if b == nil {
		return
	}
	defer b.Close()
	p.track(c, true)
	p.track(b, true)
	defer p.track(c, false)
	defer p.track(b, false)
	done := make(chan struct{}, 2)
	go func() { io.Copy(b, c); b.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, b); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

func (p *l4Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// clusterFaults runs telemetry and C2D through the proxy, kills a NATS
// node and then amqphub node A, and checks that every acknowledged
// message survived.
func clusterFaults(t *testing.T, f *clusterFixture) {
	proxy := startProxy(t, f.nodes[0].plainAddr, f.nodes[1].plainAddr)
	addr := "amqp://" + proxy.ln.Addr().String()
	host := f.nodes[0].ip
	retry := client.RetryOptions{MinDelay: 50 * time.Millisecond, MaxDelay: 500 * time.Millisecond}
	sender, err := client.NewDeviceClient(f.deviceCS(0, "device2"), &client.DeviceOptions{Address: addr, Retry: retry})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	receiver, err := client.NewDeviceClient(f.deviceCS(0, "device1"), &client.DeviceOptions{Address: addr, Retry: retry})
	if err != nil {
		t.Fatal(err)
	}
	defer receiver.Close()
	svc, err := client.NewServiceClient(serviceCS(host, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey), &client.ServiceOptions{Address: addr, Retry: retry})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu        sync.Mutex
		d2cAcked  []string
		c2dAcked  []string
		c2dGot    = map[string]int{}
		d2cFailed atomic.Int64
		c2dFailed atomic.Int64
		wg        sync.WaitGroup
		stop      atomic.Bool
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("f%d-%d", w, i)
				cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
				err := sender.SendEvent(cctx, &client.Message{MessageID: id, Body: []byte("fault test payload")})
				ccancel()
				if err != nil {
					d2cFailed.Add(1)
					continue
				}
				mu.Lock()
				d2cAcked = append(d2cAcked, id)
				mu.Unlock()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			id := fmt.Sprintf("c%d", i)
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			err := svc.SendC2D(cctx, "device1", &client.Message{MessageID: id, Body: []byte("c2d")}, nil)
			ccancel()
			if err != nil {
				c2dFailed.Add(1)
				continue
			}
			mu.Lock()
			c2dAcked = append(c2dAcked, id)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond) // pace: a C2D queue holds 50 messages
		}
	}()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for ctx.Err() == nil {
			m, err := receiver.ReceiveC2D(ctx)
			if err != nil {
				continue
			}
			if m.Complete(ctx) == nil {
				mu.Lock()
				c2dGot[m.MessageID]++
				mu.Unlock()
			}
		}
	}()
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(d2cAcked), len(c2dAcked)
	}
	// waitMore waits until d2c and c2d acknowledgements were reached and
	// returns how long each took.
	waitMore := func(what string, d2c, c2d int) (dD2C, dC2D time.Duration) {
		t.Helper()
		start := time.Now()
		deadline := start.Add(60 * time.Second)
		for {
			a, b := counts()
			if a >= d2c && dD2C == 0 {
				dD2C = time.Since(start)
			}
			if b >= c2d && dC2D == 0 {
				dC2D = time.Since(start)
			}
			if dD2C != 0 && dC2D != 0 {
				return dD2C, dC2D
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: only %d D2C and %d C2D acknowledged (want %d, %d); failures %d, %d", what, a, b, d2c, c2d, d2cFailed.Load(), c2dFailed.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitMore("warm-up", 2000, 20)
	a0, c0 := counts()
	killedNATS := 1
	f.nats.Kill(killedNATS)
	natsD2C, natsC2D := waitMore("after a NATS node was killed", a0+2000, c0+20)
	a1, c1 := counts()
	f.kill(t, 0)
	hubD2C, hubC2D := waitMore("after hub node A was killed", a1+2000, c1+20)
	f.nats.Start(killedNATS)
	a2, c2 := counts()
	waitMore("after the NATS node came back", a2+1000, c2+10)
	stop.Store(true)
	wg.Wait()

	// Every acknowledged C2D message reaches device1 (at least once).
	mu.Lock()
	wantC2D := append([]string(nil), c2dAcked...)
	mu.Unlock()
	deadline := time.Now().Add(90 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, id := range wantC2D {
			if c2dGot[id] == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged C2D messages never reached device1", missing, len(wantC2D))
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-recvDone

	// Every acknowledged D2C message is in the replicated partitions.
	nc := natstest.Connect(t, f.nats.URLs())
	// The restarted NATS node may still be catching up and its streams
	// electing leaders: poll until the partitions answer.
	var lg *jslog.Log
	openDeadline := time.Now().Add(90 * time.Second)
	for {
		lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
		lg, err = jslog.Open(lctx, nc, jslog.Options{StreamPrefix: "AMQPHUB_telemetry_", SubjectPrefix: "amqphub.telemetry", Replicas: 3, Retention: 24 * time.Hour})
		lcancel()
		if err == nil {
			break
		}
		if time.Now().After(openDeadline) {
			t.Fatalf("open the telemetry streams after the faults: %v", err)
		}
		t.Logf("telemetry streams not ready yet: %v", err)
	}
	defer lg.Close()
	ids := readIDs(t, lg)
	mu.Lock()
	acked := append([]string(nil), d2cAcked...)
	mu.Unlock()
	lost, stored2 := 0, 0
	for _, id := range acked {
		switch n := ids[id]; {
		case n == 0:
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged message %s is not stored", id)
			}
		case n > 1:
			stored2++ // at least once: a send retried after its ack was lost
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged D2C messages lost", lost, len(acked))
	}
	dups := 0
	mu.Lock()
	for _, n := range c2dGot {
		if n > 1 {
			dups++
		}
	}
	mu.Unlock()
	t.Logf("faults: %d D2C acknowledged (%d calls failed), %d stored, none lost, %d stored twice; %d C2D acknowledged (%d failed), all delivered, %d delivered twice; "+
		"after killing NATS node %d, 2000 more D2C took %v and 20 more C2D %v; after killing hub node A, %v and %v",
		len(acked), d2cFailed.Load(), len(ids), stored2, len(wantC2D), c2dFailed.Load(), dups, killedNATS, natsD2C.Round(time.Millisecond), natsC2D.Round(time.Millisecond), hubD2C.Round(time.Millisecond), hubC2D.Round(time.Millisecond))
}
