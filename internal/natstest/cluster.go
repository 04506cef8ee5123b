package natstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

const serverModule = "github.com/nats-io/nats-server/v2"

var build struct {
	once sync.Once
	path string
	err  error
}

// ServerBinary returns the path of a nats-server binary built with the go
// command from the nats-server version that the module in the working
// directory requires (a test's working directory is its package), building
// it on first use. The binary is kept under the system temp directory,
// keyed by that version, so later test runs only pay the build when the
// version changes.
func ServerBinary(tb testing.TB) string {
	tb.Helper()
	build.once.Do(func() { build.path, build.err = buildServer() })
	if build.err != nil {
		tb.Fatalf("natstest: %v", build.err)
	}
	return build.path
}

func buildServer() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command, needed to build nats-server, is not on PATH: %w", err)
	}
	// Test binaries carry no module versions, so ask the go command which
	// version the module in the working directory requires.
	out, err := exec.Command(goBin, "list", "-m", "-f", "{{.Version}}", serverModule).Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", serverModule, err)
	}
	version := strings.TrimSpace(string(out))
	if version == "" || strings.ContainsAny(version, `/\ `) {
		return "", fmt.Errorf("go list -m %s: unexpected version %q", serverModule, version)
	}
	dir := filepath.Join(os.TempDir(), "amqphub-natstest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, "nats-server-"+version)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	// Build under a temporary name and rename, so that test binaries
	// running at the same time never execute a half-written file.
	tmp, err := os.CreateTemp(dir, "build-*")
	if err != nil {
		return "", fmt.Errorf("create temp binary: %w", err)
	}
	_ = tmp.Close()
	defer os.Remove(tmp.Name())
	cmd := exec.Command(goBin, "build", "-o", tmp.Name(), serverModule)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", serverModule, err, log.String())
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("install nats-server binary: %w", err)
	}
	return path, nil
}

// Node is one nats-server process of a Cluster.
type Node struct {
	Name        string
	ClientPort  int
	ClusterPort int
	Dir         string // store directory and log file

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{}
}

// ClientURL is the node's client URL.
func (n *Node) ClientURL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.ClientPort) }

// Running reports whether the node's process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exit:
		return false
	default:
		return true
	}
}

// Cluster is a set of nats-server processes with JetStream, routed to each
// other on loopback.
type Cluster struct {
	tb    testing.TB
	bin   string
	name  string
	Nodes []*Node
}

// StartCluster builds nats-server if needed, starts n nodes with cluster
// routes between them and waits until JetStream answers through every node
// and a stream with n replicas can be placed. The processes are killed
// when the test ends.
func StartCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("natstest: cluster of %d nodes", n)
	}
	start := time.Now()
	c := &Cluster{tb: tb, bin: ServerBinary(tb), name: "amqphub-test"}
	built := time.Since(start)
	ports := freePorts(tb, 2*n)
	base := tb.TempDir()
	for i := range n {
		c.Nodes = append(c.Nodes, &Node{
			Name:        fmt.Sprintf("n%d", i+1),
			ClientPort:  ports[2*i],
			ClusterPort: ports[2*i+1],
			Dir:         filepath.Join(base, fmt.Sprintf("n%d", i+1)),
		})
	}
	tb.Cleanup(func() {
		for _, nd := range c.Nodes {
			_ = c.stop(nd)
		}
	})
	for i := range c.Nodes {
		c.Start(i)
	}
	for _, nd := range c.Nodes {
		nc := Connect(tb, nd.ClientURL())
		WaitJetStream(tb, nc)
		nc.Close()
	}
	c.waitPlacement(n)
	tb.Logf("natstest: %d-node cluster ready in %v (binary %v)", n, time.Since(start).Round(time.Millisecond), built.Round(time.Millisecond))
	return c
}

// waitPlacement polls until the cluster can place a stream on all n nodes:
// a meta leader alone is not enough, the other peers must have joined the
// meta group too, or the first R3 stream fails with "no suitable peers".
func (c *Cluster) waitPlacement(n int) {
	c.tb.Helper()
	nc := Connect(c.tb, c.URLs())
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.tb.Fatalf("natstest: %v", err)
	}
	deadline := time.Now().Add(readyTimeout)
	cfg := jetstream.StreamConfig{Name: "NATSTEST_PLACEMENT", Subjects: []string{"natstest.placement"},
		Storage: jetstream.MemoryStorage, Replicas: n}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.CreateStream(ctx, cfg)
		if err == nil {
			err = js.DeleteStream(ctx, cfg.Name)
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.tb.Fatalf("natstest: cluster cannot place an R%d stream within %v: %v", n, readyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond) // poll: peers are joining the meta group
	}
}

// URLs returns every node's client URL, comma-separated, as nats.Connect
// accepts them.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.Nodes))
	for i, nd := range c.Nodes {
		urls[i] = nd.ClientURL()
	}
	return strings.Join(urls, ",")
}

// Index returns the index in Nodes of the node with the given server
// name, or -1.
func (c *Cluster) Index(name string) int {
	for i, nd := range c.Nodes {
		if nd.Name == name {
			return i
		}
	}
	return -1
}

// Start starts node i (again, after Kill: same ports and store).
func (c *Cluster) Start(i int) {
	c.tb.Helper()
	nd := c.Nodes[i]
	if err := os.MkdirAll(nd.Dir, 0o755); err != nil {
		c.tb.Fatalf("natstest: %v", err)
	}
	var routes []string
	for _, o := range c.Nodes {
		if o != nd {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", o.ClusterPort))
		}
	}
	args := []string{
		"-a", "127.0.0.1",
		"-p", fmt.Sprint(nd.ClientPort),
		"-n", nd.Name,
		"-js", "-sd", nd.Dir,
		"--cluster_name", c.name,
		"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", nd.ClusterPort),
	}
	if len(routes) > 0 {
		args = append(args, "--routes", strings.Join(routes, ","))
	}
	logf, err := os.OpenFile(filepath.Join(nd.Dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.tb.Fatalf("natstest: %v", err)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		c.tb.Fatalf("natstest: start %s: %v", nd.Name, err)
	}
	exit := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(exit)
	}()
	nd.mu.Lock()
	nd.cmd, nd.exit = cmd, exit
	nd.mu.Unlock()
	waitListening(c.tb, nd, exit)
}

// Kill sends SIGKILL to node i and waits for the process to end.
func (c *Cluster) Kill(i int) {
	c.tb.Helper()
	if err := c.stop(c.Nodes[i]); err != nil {
		c.tb.Fatalf("natstest: kill %s: %v", c.Nodes[i].Name, err)
	}
}

func (c *Cluster) stop(nd *Node) error {
	nd.mu.Lock()
	cmd, exit := nd.cmd, nd.exit
	nd.cmd = nil
	nd.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !isDone(exit) {
		return fmt.Errorf("signal pid %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-exit:
		return nil
	case <-time.After(readyTimeout):
		return fmt.Errorf("pid %d did not exit", cmd.Process.Pid)
	}
}

func isDone(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitListening polls until the node accepts TCP connections on its client
// port, failing early if the process exits.
func waitListening(tb testing.TB, nd *Node, exit chan struct{}) {
	tb.Helper()
	deadline := time.Now().Add(readyTimeout)
	addr := fmt.Sprintf("127.0.0.1:%d", nd.ClientPort)
	for time.Now().Before(deadline) {
		if isDone(exit) {
			log, _ := os.ReadFile(filepath.Join(nd.Dir, "server.log"))
			tb.Fatalf("natstest: %s exited at start:\n%s", nd.Name, log)
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
			return
		}
		time.Sleep(20 * time.Millisecond) // poll: the process is starting
	}
	tb.Fatalf("natstest: %s not listening on %s within %v", nd.Name, addr, readyTimeout)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// Another process could take one before the server binds it; the server
// then fails to start and the test reports it.
func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("natstest: pick a free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
