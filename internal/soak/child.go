package soak

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"amqphub/internal/c2dsvc"
	"amqphub/internal/server"
	"amqphub/internal/tlsutil"
)

// ChildSpec is what a hub child process is started with. Every start of
// one soak uses the same spec: same data directory, same ports.
type ChildSpec struct {
	DataDir    string `json:"dataDir"`
	AMQPAddr   string `json:"amqpAddr"`  // plain AMQP, host:port
	HTTPSAddr  string `json:"httpsAddr"` // REST, host:port
	Partitions int    `json:"partitions"`
	// C2DLockDuration is the C2D lock: messages delivered but not
	// completed at a kill come back once it expires.
	C2DLockDuration time.Duration `json:"c2dLockDuration"`
}

// Launcher returns the command that runs a hub for spec. The command must
// serve until killed, and shut down cleanly on SIGTERM.
type Launcher func(spec ChildSpec) (*exec.Cmd, error)

// BinaryLauncher runs `<path> serve` of an amqphub binary.
func BinaryLauncher(path string) Launcher {
	return func(spec ChildSpec) (*exec.Cmd, error) {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("soak: hub binary: %w", err)
		}
		// Settings without a flag go in a config file.
		conf := filepath.Join(spec.DataDir, "soak-config.yaml")
		yaml := fmt.Sprintf("c2d:\n  lockDuration: %s\n", spec.C2DLockDuration)
		if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
			return nil, fmt.Errorf("soak: hub config: %w", err)
		}
		return exec.Command(path, "serve",
			"--config", conf,
			"--data-dir", spec.DataDir,
			"--amqp-addr", spec.AMQPAddr,
			"--amqps-addr", "off",
			"--https-addr", spec.HTTPSAddr,
			"--partitions", strconv.Itoa(spec.Partitions),
			"--host-name", HostName,
			"--log-level", "warn",
		), nil
	}
}

// ChildEnv carries a ChildSpec (JSON) to a re-executed binary; see
// SelfLauncher and ServeChild.
const ChildEnv = "AMQPHUB_SOAK_CHILD"

// SelfLauncher re-executes the running binary with args (for a test
// binary, "-test.run=^TestName$") and the spec in ChildEnv. That binary
// must call ServeChild early (a test: first thing in the test function).
func SelfLauncher(args ...string) Launcher {
	return func(spec ChildSpec) (*exec.Cmd, error) {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("soak: own executable: %w", err)
		}
		b, err := json.Marshal(spec)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), ChildEnv+"="+string(b))
		return cmd, nil
	}
}

// ServeChild runs a hub as a SelfLauncher child when ChildEnv is set,
// until SIGTERM (clean shutdown) or SIGKILL, and reports true; the caller
// must then exit. Without ChildEnv it reports false at once.
func ServeChild() (bool, error) {
	v := os.Getenv(ChildEnv)
	if v == "" {
		return false, nil
	}
	var spec ChildSpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		return true, fmt.Errorf("soak child: %s: %w", ChildEnv, err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	s, err := server.Start(server.Options{
		DataDir:    spec.DataDir,
		HostName:   HostName,
		AMQPAddr:   spec.AMQPAddr,
		AMQPSAddr:  "off",
		HTTPSAddr:  spec.HTTPSAddr,
		Partitions: spec.Partitions,
		C2D:        c2dsvc.Config{LockDuration: spec.C2DLockDuration},
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return true, fmt.Errorf("soak child: start hub: %w", err)
	}
	<-sig
	return true, s.Close()
}

// HostName is the hub host name of soak children (tokens name it).
const HostName = "localhost"

// freeAddrs returns n distinct free loopback addresses. They are released
// before the child binds them; on loopback nothing else takes them in
// between in practice.
func freeAddrs(n int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var out []string
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("soak: pick a port: %w", err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}

// child is a running hub process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	err    error // after exited
	stderr *tailBuffer
}

// tailBuffer keeps the last bytes a child wrote to stderr, for errors.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 16<<10 {
		t.b = append(t.b[:0], t.b[len(t.b)-8<<10:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// startChild starts the hub and waits until both its AMQP and REST
// listeners answer.
func startChild(ctx context.Context, launch Launcher, spec ChildSpec) (*child, error) {
	cmd, err := launch(spec)
	if err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), stderr: &tailBuffer{}}
	cmd.Stdout = io.Discard
	cmd.Stderr = c.stderr
	// Stdin stays open for the child's lifetime: some launchers' children
	// stop when it closes.
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("soak: start hub: %w", err)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	if err := c.waitReady(ctx, spec); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

func (c *child) waitReady(ctx context.Context, spec ChildSpec) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			return fmt.Errorf("soak: the hub exited while starting (%v): %s", c.err, c.stderr.String())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		last = probe(spec)
		if last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("soak: the hub did not become ready within 60 s: %v", last)
}

// probe checks that the AMQP port accepts and REST answers over TLS.
func probe(spec ChildSpec) error {
	nc, err := net.DialTimeout("tcp", spec.AMQPAddr, time.Second)
	if err != nil {
		return err
	}
	nc.Close()
	if _, err := os.Stat(filepath.Join(spec.DataDir, "tls", tlsutil.CACertFile)); err != nil {
		return err
	}
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + spec.HTTPSAddr + "/statistics/devices")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("REST probe: status %d", resp.StatusCode)
	}
	return nil
}

// kill SIGKILLs the child and waits for it.
func (c *child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
	c.stdin.Close()
}

// stop asks the child to shut down (SIGTERM) and waits up to timeout.
func (c *child) stop(timeout time.Duration) error {
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-c.exited:
	case <-time.After(timeout):
		c.kill()
		return fmt.Errorf("soak: the hub did not stop within %v of SIGTERM", timeout)
	}
	c.stdin.Close()
	if c.err != nil {
		return fmt.Errorf("soak: the hub's shutdown failed (%v): %s", c.err, c.stderr.String())
	}
	return nil
}
