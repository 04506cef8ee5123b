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
	durLock   = 3 * time.Second
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
		Devices:   []server.DeviceConfig{{ID: durDevice, PrimaryKey: durKey, SecondaryKey: durKey}},
		C2D:       c2dsvc.Config{LockDuration: durLock, FeedbackInterval: 20 * time.Millisecond},
		Logger:    log,
	}
}

func durDevice1(t *testing.T, addr string) *goamqp.Receiver {
	t.Helper()
	token := sas.Sign("localhost/devices/"+durDevice, decodeKey(t, durKey), "", time.Now().Add(time.Hour))
	return receiver(t, dial(t, addr, durDevice+"@sas.amqphub", token), deviceBound(durDevice, ""), 10, false)
}

func durService(t *testing.T, addr string) *goamqp.Conn {
	t.Helper()
	return dial(t, addr, "iothubowner@sas.root.amqphub",
		sas.Sign("localhost", decodeKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour)))
}

// durBefore leaves the hub with every kind of state, each one durable
// before it returns (each step is observed through an effect the hub shows
// only after its commit): m1, m4 and m5 locked; m3 abandoned once and
// locked again; m2 completed, its Success feedback delivered to the service
// and not settled. It returns when the locks were taken, at the latest.
func durBefore(t *testing.T, addr string) time.Time {
	t.Helper()
	svc := durService(t, addr)
	snd := c2dSender(t, svc)
	for i := 1; i <= 5; i++ {
		send(t, snd, c2dMessage(deviceBound(durDevice, ""), fmt.Sprint("m", i), "full", fmt.Sprint("body", i)))
	}
	dev := durDevice1(t, addr)
	got := map[string]*goamqp.Message{}
	for range 5 {
		m := receive(t, dev)
		got[m.Properties.MessageID.(string)] = m
	}
	locked := time.Now()
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
	return locked
}

// durAfter checks the state durBefore left: the feedback is delivered
// again; the locked messages are not delivered before their locks expire,
// then come back with their delivery counts; m2 is gone.
func durAfter(t *testing.T, addr string, locked time.Time) {
	t.Helper()
	svc := durService(t, addr)
	fb := newFeedbackReader(t, svc)
	fb.want("m2:Success")
	dev := durDevice1(t, addr)
	var ids []string
	for i := range 4 {
		m := receive(t, dev)
		if i == 0 {
			if waited := time.Since(locked); waited < durLock-100*time.Millisecond {
				t.Fatalf("a locked message was delivered %v after it was locked; the lock lasts %v", waited, durLock)
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
	locked := durBefore(t, s1.AMQPAddr)
	if err := s1.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	s2, err := server.Start(durOptions(dir, amqptest.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	durAfter(t, s2.AMQPAddr, locked)
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
	locked := durBefore(t, addr1)
	if err := child1.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child1.Wait()
	_, addr2 := startChild(t, dir)
	durAfter(t, addr2, locked)
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

