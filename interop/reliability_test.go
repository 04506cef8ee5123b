package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog"
	"amqphub/store/partlog/seglog"
)

// Reliability of the assembled hub: graceful shutdown of the real binary,
// and disk-full (injected and real) on the telemetry path.

// buildHub builds cmd/amqphub once per test binary run.
var buildHub = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "amqphub-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "amqphub")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/amqphub").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/amqphub: %v\n%s", err, out)
	}
	return bin, nil
})

// ackTracker sends telemetry from one device with many messages in
// flight and records which were acknowledged.
type ackTracker struct {
	mu    sync.Mutex
	acked []string
}

func (a *ackTracker) add(id string) {
	a.mu.Lock()
	a.acked = append(a.acked, id)
	a.mu.Unlock()
}

func (a *ackTracker) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acked)
}

// pumpTelemetry sends from snd until it fails, with inFlight messages
// awaiting outcomes; accepted ids are recorded, rejections go to onReject.
func pumpTelemetry(ctx context.Context, snd *goamqp.Sender, prefix string, inFlight int, body []byte, a *ackTracker, onReject func(id string, e *goamqp.Error)) error {
	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := 0; ; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		id := fmt.Sprintf("%s-%d", prefix, i)
		r, err := snd.SendWithReceipt(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: id}, Data: [][]byte{body}}, nil)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			st, err := r.Wait(ctx)
			if err != nil {
				return
			}
			switch st := st.(type) {
			case *goamqp.StateAccepted:
				a.add(id)
			case *goamqp.StateRejected:
				if onReject != nil {
					onReject(id, st.Error)
				}
			}
		}()
	}
}

// logIDs opens the telemetry log in dir and returns every stored
// message-id with its count, failing on gaps in sequence numbers.
func logIDs(t *testing.T, dir string) map[string]int {
	t.Helper()
	lg, err := seglog.Open(dir, seglog.Options{})
	if err != nil {
		t.Fatalf("reopen the telemetry log: %v", err)
	}
	defer lg.Close()
	return readIDs(t, lg)
}

func readIDs(t *testing.T, lg partlog.Log) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for p := 0; p < lg.Partitions(); p++ {
		var next int64
		for {
			recs, err := lg.Read(p, next, 1000, 0, nil)
			if err != nil {
				t.Fatalf("read partition %d: %v", p, err)
			}
			if len(recs) == 0 {
				break
			}
			for _, rec := range recs {
				if rec.Seq != next {
					t.Fatalf("partition %d: sequence number %d where %d was due", p, rec.Seq, next)
				}
				next++
				var m frames.Message
				if err := m.UnmarshalAMQP(rec.Payload); err != nil {
					t.Fatalf("partition %d record %d: %v", p, rec.Seq, err)
				}
				id, _ := m.Properties.MessageID.(string)
				ids[id]++
			}
		}
	}
	return ids
}

// checkAcked fails unless every acknowledged id is stored exactly once.
func checkAcked(t *testing.T, acked []string, ids map[string]int) {
	t.Helper()
	bad := 0
	for _, id := range acked {
		if ids[id] != 1 {
			bad++
			if bad <= 5 {
				t.Errorf("acknowledged message %s stored %d times", id, ids[id])
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d acknowledged messages not stored exactly once", bad, len(acked))
	}
}

// TestServeSIGTERM runs the real `amqphub serve`, has a device send with
// many messages in flight, and sends SIGTERM: the device must see its
// connection closed with amqp:connection:forced, the listener must be
// closed by then, the process must exit 0, and every acknowledged message
// must be in the log.
func TestServeSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, err := buildHub()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "serve", "--data-dir", dir, "--amqp-addr", "127.0.0.1:0", "--amqps-addr", "off", "--https-addr", "off", "--log-level", "warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	waited := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	defer func() {
		cmd.Process.Kill()
		// Read stderr only after the process is gone: exec's copier
		// goroutine writes to the buffer until then.
		<-waited
		if t.Failed() {
			t.Logf("hub stderr:\n%s", stderr.String())
		}
	}()
	addr, devCS := readBanner(t, out)
	key := devCS["device1"]
	if addr == "" || key == "" {
		t.Fatalf("the banner lacks the AMQP address or device1's key (%q, %v)", addr, devCS)
	}
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := goamqp.Dial(ctx, "amqp://"+addr, &goamqp.ConnOptions{
		SASLType: goamqp.SASLTypePlain("device1@sas.amqphub", sas.Sign("localhost/devices/device1", k, "", time.Now().Add(time.Hour))),
		HostName: "localhost",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx, "/devices/device1/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	// go-amqp v1.7.0 can leave a Send blocked when its connection dies
	// mid-send, until the link is closed.
	go func() {
		<-conn.Done()
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		defer ccancel()
		snd.Close(cctx)
	}()
	var a ackTracker
	pumped := make(chan error, 1)
	go func() { pumped <- pumpTelemetry(ctx, snd, "term", 256, make([]byte, 512), &a, nil) }()
	deadline := time.Now().Add(30 * time.Second)
	for a.count() < 2000 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acknowledgements in 30 s", a.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Terminate while the device has messages in flight.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the connection was not closed within 30 s of SIGTERM")
	}
	var ce *goamqp.ConnError
	if !errors.As(conn.Err(), &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCondConnectionForced {
		t.Fatalf("connection ended with %v, want the hub's close with %s", conn.Err(), goamqp.ErrCondConnectionForced)
	}
	// The listener closed before the connections were.
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Fatal("the hub still accepts connections after closing them with connection:forced")
	}
	<-pumped
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the hub exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the hub did not exit within 30 s of SIGTERM")
	}
	ids := logIDs(t, filepath.Join(dir, "telemetry"))
	checkAcked(t, a.acked, ids)
	t.Logf("%d messages acknowledged before SIGTERM, %d stored", len(a.acked), len(ids))
}

var (
	bannerAddr = regexp.MustCompile(`plain AMQP \(development\)\s+(\S+)`)
	bannerDev  = regexp.MustCompile(`DeviceId=([^;]+);SharedAccessKey=(\S+)`)
)

// readBanner reads serve's banner up to its last line and returns the
// plain AMQP address and each device's key.
func readBanner(t *testing.T, r io.Reader) (string, map[string]string) {
	t.Helper()
	type result struct {
		addr string
		devs map[string]string
	}
	ch := make(chan result, 1)
	go func() {
		res := result{devs: map[string]string{}}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			if m := bannerAddr.FindStringSubmatch(line); m != nil {
				res.addr = m[1]
			}
			if m := bannerDev.FindStringSubmatch(line); m != nil {
				res.devs[m[1]] = m[2]
			}
			if strings.Contains(line, "public development keys") {
				ch <- res
				io.Copy(io.Discard, r)
				return
			}
		}
		ch <- res
	}()
	select {
	case res := <-ch:
		return res.addr, res.devs
	case <-time.After(60 * time.Second):
		t.Fatal("no banner from the hub within 60 s")
		return "", nil
	}
}

// flakyLog fails appends while failing is set, the way a full disk does:
// some calls are refused at once, others fail in the committer.
type flakyLog struct {
	partlog.Log
	failing atomic.Bool
	calls   atomic.Int64
	failed  atomic.Int64
}

var errInjected = fmt.Errorf("injected write error: %w", syscall.ENOSPC)

func (f *flakyLog) AppendAsync(p int, payload []byte, done func(partlog.Entry, error)) error {
	if !f.failing.Load() {
		return f.Log.AppendAsync(p, payload, done)
	}
	f.failed.Add(1)
	if f.calls.Add(1)%2 == 0 {
		return errInjected
	}
	go done(partlog.Entry{}, errInjected)
	return nil
}

// countingHandler counts log records whose message starts with a prefix.
type countingHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.msgs = append(h.msgs, r.Level.String()+" "+r.Message)
	h.mu.Unlock()
	return nil
}

func (h *countingHandler) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// lateEndpoint serves with an endpoint installed after the hub started.
type lateEndpoint struct{ ep atomic.Pointer[hub.Endpoint] }

func (l *lateEndpoint) Attach(req *hub.AttachRequest) *amqp.Error {
	if ep := l.ep.Load(); ep != nil {
		return (*ep).Attach(req)
	}
	return amqp.NewError(amqp.ErrCondNotFound, "not ready")
}

// startTelemetryOver starts a hub whose telemetry ingest appends through
// wrap(the hub's log), logging to h.
func startTelemetryOver(t *testing.T, mod func(*server.Options), wrap func(partlog.Log) partlog.Log, h slog.Handler) *server.Server {
	late := &lateEndpoint{}
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "full1"}, {ID: "full2"}}
		o.Endpoints = map[hub.Kind]hub.Endpoint{hub.KindDeviceEvents: late}
		if mod != nil {
			mod(o)
		}
	})
	m, err := telemetry.Setup(&hub.Env{
		HubName: s.Options.HubName, HostName: s.Options.HostName, EventHubName: s.Options.EventHubName,
		Hub: s.Hub, Authority: s.Authority, Registry: s.Registry, REST: s.REST,
		Log: wrap(s.Log), Logger: slog.New(h),
	}, telemetry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ep := m.Endpoints[hub.KindDeviceEvents]
	late.ep.Store(&ep)
	return s
}

// deviceSenderFor connects a registered device of s and opens its events
// link.
func deviceSenderFor(t *testing.T, s *server.Server, dev string) *goamqp.Sender {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := s.Registry.GetDevice(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := base64.StdEncoding.DecodeString(d.Authentication.SymmetricKey.PrimaryKey)
	c, err := goamqp.Dial(ctx, "amqp://"+s.AMQPAddr, &goamqp.ConnOptions{
		SASLType: goamqp.SASLTypePlain(dev+"@sas."+s.Options.HubName, sas.Sign(s.Options.HostName+"/devices/"+dev, k, "", time.Now().Add(time.Hour))),
		HostName: s.Options.HostName,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx, "/devices/"+dev+"/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	return snd
}

// rejections records rejected message ids and checks their condition.
type rejections struct {
	mu  sync.Mutex
	ids map[string]bool
	bad []string
}

func (r *rejections) onReject(id string, e *goamqp.Error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	r.ids[id] = true
	if e == nil || e.Condition != goamqp.ErrCondInternalError || e.Description == "" {
		r.bad = append(r.bad, fmt.Sprintf("%s: %v", id, e))
	}
}

func (r *rejections) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ids)
}

// TestWriteErrorsWhileLoaded: two devices send under load while the log's
// appends fail for a while. The hub rejects with amqp:internal-error (and
// a description) while they fail, logs the outage once, accepts again by
// itself when they succeed, and the log holds every acknowledged message
// exactly once with continuous sequence numbers and nothing rejected.
func TestWriteErrorsWhileLoaded(t *testing.T) {
	var fl *flakyLog
	h := &countingHandler{}
	s := startTelemetryOver(t, nil, func(l partlog.Log) partlog.Log { fl = &flakyLog{Log: l}; return fl }, h)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var a ackTracker
	var rej rejections
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, dev := range []string{"full1", "full2"} {
		snd := deviceSenderFor(t, s, dev)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pumpTelemetry(lctx, snd, dev, 64, make([]byte, 256), &a, rej.onReject)
		}()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("acknowledgements before the outage", func() bool { return a.count() > 500 })
	fl.failing.Store(true)
	waitFor("rejections during the outage", func() bool { return rej.count() > 200 })
	ackedAtRecovery := a.count()
	fl.failing.Store(false)
	waitFor("acknowledgements after the outage", func() bool { return a.count() > ackedAtRecovery+500 })
	stop()
	wg.Wait()

	if len(rej.bad) > 0 {
		t.Fatalf("rejections without amqp:internal-error and a description: %v", rej.bad[:min(5, len(rej.bad))])
	}
	if n := h.count("ERROR telemetry: appending to the log failed"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	if n := h.count("INFO telemetry: appends to the log succeed again"); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
	ids := readIDs(t, s.Log)
	checkAcked(t, a.acked, ids)
	for id := range rej.ids {
		if ids[id] != 0 {
			t.Fatalf("rejected message %s was stored", id)
		}
	}
	t.Logf("%d acknowledged, %d rejected during the outage (%d appends failed), %d stored", len(a.acked), rej.count(), fl.failed.Load(), len(ids))
}

// TestDiskFull fills a real small filesystem (a 2 MiB tmpfs holding the
// telemetry log) until the hub refuses, then frees space: the hub accepts
// again by itself, and after a restart the log opens cleanly and holds
// every acknowledged message exactly once.
func TestDiskFull(t *testing.T) {
	dataDir := t.TempDir()
	mnt := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v): the injected-error test covers write failures", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	// Ballast takes most of the space; deleting it is "space returns".
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(mnt, "telemetry")
	if err := os.Mkdir(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(logDir, filepath.Join(dataDir, "telemetry")); err != nil {
		t.Fatal(err)
	}
	h := &countingHandler{}
	opts := server.Options{
		DataDir: dataDir, AMQPAddr: "127.0.0.1:0", AMQPSAddr: "off", HTTPSAddr: "off",
		Devices: []server.DeviceConfig{{ID: "full1"}},
		Logger:  slog.New(h),
	}
	s, err := server.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	snd := deviceSenderFor(t, s, "full1")
	var a ackTracker
	var rej rejections
	body := make([]byte, 4<<10)
	lctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pumpTelemetry(lctx, snd, "fill", 16, body, &a, rej.onReject)
	}()
	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %v waiting for %s (%d acknowledged, %d rejected)", d, what, a.count(), rej.count())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("the disk to fill", 60*time.Second, func() bool { return rej.count() > 20 })
	full := a.count()
	if n := h.count("ERROR telemetry: appending to the log failed"); n != 1 {
		t.Errorf("the full disk was logged %d times, want once", n)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	waitFor("acceptance after space returned", 30*time.Second, func() bool { return a.count() > full+50 })
	stop()
	<-done
	if len(rej.bad) > 0 {
		t.Fatalf("rejections without amqp:internal-error and a description: %v", rej.bad[:min(5, len(rej.bad))])
	}
	if n := h.count("INFO telemetry: appends to the log succeed again"); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	ids := logIDs(t, logDir)
	checkAcked(t, a.acked, ids)
	for id := range rej.ids {
		if ids[id] != 0 {
			t.Fatalf("rejected message %s was stored", id)
		}
	}
	t.Logf("%d acknowledged (%d before the disk filled), %d rejected while full, %d stored", len(a.acked), full, rej.count(), len(ids))
}
