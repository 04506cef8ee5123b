package c2dsvc_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/c2dsvc"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

const (
	durDevice = "dur-dev"
	// durIdle never connects before the restart: its message stays
	// enqueued, not locked.
	durIdle = "dur-idle"
	durLock = 3 * time.Second
	// durCrashEnv names the data directory of the child hub of
	// TestCrashKeepsState.
	durCrashEnv = "C2D_CRASH_DIR"
)

var durKey = base64.StdEncoding.EncodeToString([]byte("c2d-durability-device-key-01234"))

// durOptions are the hub's options in both durability tests: on disk, with
// a 3-second lock so that a lock that survives is visible.
func durOptions(dir string, log *slog.Logger) server.Options {
	return server.Options{
		DataDir:   dir,
		AMQPAddr:  "127.0.0.1:0",
		AMQPSAddr: "off",
		HTTPSAddr: "off",
		Devices: []server.DeviceConfig{
			{ID: durDevice, PrimaryKey: durKey, SecondaryKey: durKey},
			{ID: durIdle, PrimaryKey: durKey, SecondaryKey: durKey},
		},
		C2D:    c2dsvc.Config{LockDuration: durLock, FeedbackInterval: 20 * time.Millisecond},
		Logger: log,
	}
}

func durReceiver(t *testing.T, addr, dev string) *goamqp.Receiver {
	t.Helper()
	token := sas.Sign("localhost/devices/"+dev, decodeKey(t, durKey), "", time.Now().Add(time.Hour))
	return receiver(t, dial(t, addr, dev+"@sas.amqphub", token), deviceBound(dev, ""), 10, false)
}

func durService(t *testing.T, addr string) *goamqp.Conn {
	t.Helper()
	return dial(t, addr, "iothubowner@sas.root.amqphub",
		sas.Sign("localhost", decodeKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour)))
}

// durBefore leaves the hub with every kind of state, each one durable
// before it returns (each step is observed through an effect the hub shows
// only after its commit): p1 enqueued for a device that is not connected;
// m1, m4 and m5 locked; m3 abandoned once and locked again; m2 completed,
// its Success feedback delivered to the service and not settled. It returns
// a time before any lock was taken.
func durBefore(t *testing.T, addr string) time.Time {
	t.Helper()
	svc := durService(t, addr)
	snd := c2dSender(t, svc)
	send(t, snd, c2dMessage(deviceBound(durIdle, ""), "p1", "full", "body-p1"))
	for i := 1; i <= 5; i++ {
		send(t, snd, c2dMessage(deviceBound(durDevice, ""), fmt.Sprint("m", i), "full", fmt.Sprint("body", i)))
	}
	beforeLocks := time.Now()
	dev := durReceiver(t, addr, durDevice)
	got := map[string]*goamqp.Message{}
	for range 5 {
		m := receive(t, dev)
		got[m.Properties.MessageID.(string)] = m
	}
	settle(t, dev, got["m3"], "release")
	if m := receive(t, dev); m.Properties.MessageID != "m3" || ann(m, c2dsvc.AnnDeliveryCount) != uint8(1) {
		t.Fatalf("after the abandon: %v with count %v", m.Properties.MessageID, ann(m, c2dsvc.AnnDeliveryCount))
	}
	settle(t, dev, got["m2"], "accept")
	fb := receiver(t, svc, "/messages/serviceBound/feedback", 10, false)
	m := receive(t, fb)
	if !strings.Contains(string(m.GetData()), `"originalMessageId":"m2","enqueuedTimeUtc"`) {
		t.Fatalf("feedback before the restart: %s", m.GetData())
	}
	return beforeLocks
}

// durAfter checks the state durBefore left: the feedback is delivered
// again; the enqueued message is delivered at once; the locked messages are
// not delivered before their locks expire, then come back with their
// delivery counts; m2 is gone.
func durAfter(t *testing.T, addr string, beforeLocks time.Time) {
	t.Helper()
	svc := durService(t, addr)
	fb := newFeedbackReader(t, svc)
	fb.want("m2:Success")
	idle := durReceiver(t, addr, durIdle)
	if m := receive(t, idle); m.Properties.MessageID != "p1" || string(m.GetData()) != "body-p1" {
		t.Fatalf("the idle device got %v %q", m.Properties.MessageID, m.GetData())
	} else {
		settle(t, idle, m, "accept")
	}
	fb.want("p1:Success")
	dev := durReceiver(t, addr, durDevice)
	var ids []string
	for i := range 4 {
		m := receive(t, dev)
		if i == 0 {
			// Every lock was taken after beforeLocks, so none can expire
			// before beforeLocks+durLock; a lock lost in the restart
			// would let the message come back at once.
			if waited := time.Since(beforeLocks); waited < durLock {
				t.Fatalf("a locked message was delivered %v after the locks were taken; the lock lasts %v", waited, durLock)
			}
		}
		id := m.Properties.MessageID.(string)
		want := uint8(0)
		if id == "m3" {
			want = 1
		}
		if ann(m, c2dsvc.AnnDeliveryCount) != want || string(m.GetData()) != "body"+id[1:] {
			t.Fatalf("%s: delivery count %v, body %q", id, ann(m, c2dsvc.AnnDeliveryCount), m.GetData())
		}
		ids = append(ids, id)
		settle(t, dev, m, "accept")
	}
	sort.Strings(ids)
	if strings.Join(ids, ",") != "m1,m3,m4,m5" {
		t.Fatalf("after the restart the device got %v", ids)
	}
	fb.want("m1:Success", "m3:Success", "m4:Success", "m5:Success")
}

// TestRestartKeepsState closes the hub gracefully and starts it again on
// its data directory.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	s1, err := server.Start(durOptions(dir, amqptest.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	beforeLocks := durBefore(t, s1.AMQPAddr)
	if err := s1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	s2, err := server.Start(durOptions(dir, amqptest.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	durAfter(t, s2.AMQPAddr, beforeLocks)
}

// TestCrashKeepsState runs the hub as a child process (this test binary,
// re-executed) on a data directory, SIGKILLs it once the state exists, and
// starts it again on the same directory.
func TestCrashKeepsState(t *testing.T) {
	if dir := os.Getenv(durCrashEnv); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns hub processes")
	}
	dir := t.TempDir()
	child1, addr1 := startChild(t, dir)
	beforeLocks := durBefore(t, addr1)
	if err := child1.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child1.Wait()
	_, addr2 := startChild(t, dir)
	durAfter(t, addr2, beforeLocks)
}

// startChild starts the child hub and returns it with its AMQP address.
func startChild(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsState$", "-test.count=1")
	cmd.Env = append(os.Environ(), durCrashEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // the child exits when the parent goes
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	})
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrCh <- a
			}
		}
		close(addrCh)
		io.Copy(io.Discard, out)
	}()
	select {
	case a, ok := <-addrCh:
		if !ok {
			t.Fatalf("the child hub did not start:\n%s", stderr.String())
		}
		return cmd, a
	case <-time.After(30 * time.Second):
		t.Fatalf("the child hub did not start within 30 s:\n%s", stderr.String())
	}
	return nil, ""
}

// crashChild is the hub process: it serves until killed or until its
// stdin closes.
func crashChild(dir string) {
	s, err := server.Start(durOptions(dir, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
	if err != nil {
		fmt.Fprintln(os.Stderr, "start hub:", err)
		os.Exit(2)
	}
	fmt.Printf("ADDR %s\n", s.AMQPAddr)
	io.Copy(io.Discard, os.Stdin)
	s.Close()
	os.Exit(0)
}
