package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/internal/hub"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog"
)

// gateLog wraps a real log. It can fail appends (asynchronously, or at
// once) and hold completions back after the record is durable, so a test
// controls when the hub learns that a record is on disk.
type gateLog struct {
	partlog.Log
	mu       sync.Mutex
	failErr  error // completes every append with this error
	syncErr  error // AppendAsync returns this error
	hold     bool
	held     []func()
	heldCh   chan struct{}
	released atomic.Int64 // completions handed to the hub
}

func newGateLog(l partlog.Log) *gateLog { return &gateLog{Log: l, heldCh: make(chan struct{}, 1024)} }

func (g *gateLog) AppendAsync(p int, payload []byte, done func(partlog.Entry, error)) error {
	g.mu.Lock()
	failErr, syncErr := g.failErr, g.syncErr
	g.mu.Unlock()
	if syncErr != nil {
		return syncErr
	}
	if failErr != nil {
		go done(partlog.Entry{}, failErr)
		return nil
	}
	return g.Log.AppendAsync(p, payload, func(e partlog.Entry, err error) {
		g.mu.Lock()
		if g.hold {
			g.held = append(g.held, func() { g.released.Add(1); done(e, err) })
			g.mu.Unlock()
			g.heldCh <- struct{}{}
			return
		}
		g.mu.Unlock()
		g.released.Add(1)
		done(e, err)
	})
}

func (g *gateLog) set(f func(g *gateLog)) {
	g.mu.Lock()
	f(g)
	g.mu.Unlock()
}

// release hands n held completions (all if n < 0) to the hub, in order.
func (g *gateLog) release(n int) {
	g.mu.Lock()
	if n < 0 || n > len(g.held) {
		n = len(g.held)
	}
	fns := g.held[:n]
	g.held = append([]func(){}, g.held[n:]...)
	if len(g.held) == 0 && n > 0 {
		g.hold = false
	}
	g.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

func (g *gateLog) waitHeld(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-g.heldCh:
		case <-time.After(10 * time.Second):
			t.Fatal("the record never reached the log")
		}
	}
}

// logCounter is a slog handler that keeps records, to check what the hub
// logs and how often.
type logCounter struct {
	mu   sync.Mutex
	recs []string
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCounter) WithGroup(string) slog.Handler            { return h }
func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool { line += " " + a.String(); return true })
	h.mu.Lock()
	h.recs = append(h.recs, line)
	h.mu.Unlock()
	return nil
}

func (h *logCounter) count(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.recs {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

func testEnv(s *server.Server, lg partlog.Log, logger *slog.Logger) *hub.Env {
	return &hub.Env{
		HubName: s.Options.HubName, HostName: s.Options.HostName, EventHubName: s.Options.EventHubName,
		AMQPSPort: portOf(s.AMQPSAddr), AMQPPort: portOf(s.AMQPAddr),
		Hub: s.Hub, Authority: s.Authority, Registry: s.Registry, REST: s.REST,
		Log: lg, Logger: logger,
	}
}

func portOf(addr string) int {
	var p int
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		fmt.Sscanf(addr[i+1:], "%d", &p)
	}
	return p
}

// swapEndpoint lets a test install an endpoint built after the hub started.
type swapEndpoint struct{ ep atomic.Pointer[hub.Endpoint] }

func (s *swapEndpoint) Attach(req *hub.AttachRequest) *amqp.Error {
	ep := s.ep.Load()
	if ep == nil {
		return amqp.NewError(amqp.ErrCondNotFound, "no endpoint yet")
	}
	return (*ep).Attach(req)
}

// startGated starts a hub whose telemetry ingest appends through a gateLog.
func startGated(t *testing.T) (*server.Server, *gateLog, *logCounter) {
	sw := &swapEndpoint{}
	s := startHub(t, func(o *server.Options) {
		o.Endpoints = map[hub.Kind]hub.Endpoint{hub.KindDeviceEvents: sw}
	})
	g := newGateLog(s.Log)
	lc := &logCounter{}
	m, err := telemetry.Setup(testEnv(s, g, slog.New(lc)), telemetry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ep := m.Endpoints[hub.KindDeviceEvents]
	sw.ep.Store(&ep)
	return s, g, lc
}

// sendAsync sends on snd in the background.
func sendAsync(ctx context.Context, snd *goamqp.Sender, m *goamqp.Message) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- snd.Send(ctx, m, nil) }()
	return ch
}

// notYet checks that no outcome arrived: a negative check, so it gives
// the outcome a moment to arrive if the hub (wrongly) sent one already.
func notYet(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s: the device got an outcome (%v) before the record was reported durable", what, err)
	case <-time.After(150 * time.Millisecond):
	}
}

func waitSent(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome 10 s after the record was durable")
		return nil
	}
}

func TestAcceptedOnlyWhenDurable(t *testing.T) {
	s, g, _ := startGated(t)
	user, token := deviceLogin(t, s, "d1", "")
	c := dial(t, s.AMQPAddr, user, token)
	snd := openSender(t, c, "/devices/d1/messages/events", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	part := telemetry.Partition("d1", testPartitions)

	g.set(func(g *gateLog) { g.hold = true })
	res := sendAsync(ctx, snd, &goamqp.Message{Data: [][]byte{[]byte("one")}})
	g.waitHeld(t, 1)
	// The record is on disk but the hub has not been told: no outcome yet,
	// even after a round trip on the same connection.
	openSender(t, c, "/devices/d1/messages/events", nil)
	notYet(t, res, "single message")
	if n := len(readAll(t, s.Log, part)); n != 1 {
		t.Fatalf("log holds %d records", n)
	}
	g.release(-1)
	if err := waitSent(t, res); err != nil {
		t.Fatalf("send: %v", err)
	}

	// A batch is accepted only once its last record is durable.
	var inner [][]byte
	for i := range 3 {
		b, _ := (&goamqp.Message{Data: [][]byte{{byte(i)}}}).MarshalBinary()
		inner = append(inner, b)
	}
	g.set(func(g *gateLog) { g.hold = true })
	res = sendAsync(ctx, snd, &goamqp.Message{Format: 0x80013700, Data: inner})
	g.waitHeld(t, 3)
	g.release(2)
	notYet(t, res, "batch with one record not yet durable")
	g.release(-1)
	if err := waitSent(t, res); err != nil {
		t.Fatalf("send batch: %v", err)
	}
	if got := g.released.Load(); got != 4 {
		t.Errorf("%d completions released, want 4", got)
	}
}

func TestAppendFailureRejects(t *testing.T) {
	s, g, lc := startGated(t)
	snd := deviceSender(t, s, "d2", "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	send := func(body string) error {
		return snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte(body)}}, nil)
	}
	if err := send("before"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		set  func(g *gateLog)
	}{
		{"append completes with an error", func(g *gateLog) { g.failErr = errors.New("injected: disk full") }},
		{"append refused at once", func(g *gateLog) { g.syncErr = fmt.Errorf("injected: %w", partlog.ErrClosed) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g.set(tc.set)
			for i := range 5 {
				if err := send(fmt.Sprintf("fail %d", i)); condOf(err) != goamqp.ErrCondInternalError {
					t.Fatalf("message %d: %v, want rejected with %s", i, err, goamqp.ErrCondInternalError)
				}
			}
			// Five rejections, one error logged.
			if n := lc.count("ERROR telemetry: appending to the log failed"); n != 1 {
				t.Errorf("%d error records logged for one outage, want 1", n)
			}
			g.set(func(g *gateLog) { g.failErr, g.syncErr = nil, nil })
			if err := send("after " + tc.name); err != nil {
				t.Fatalf("send after recovery: %v", err)
			}
			if n := lc.count("INFO telemetry: appends to the log succeed again rejected=5"); n != 1 {
				t.Errorf("recovery logged %d times, want once with rejected=5; log: %v", n, lc.recs)
			}
			lc.mu.Lock()
			lc.recs = nil
			lc.mu.Unlock()
		})
	}
	recs := readAll(t, s.Log, telemetry.Partition("d2", testPartitions))
	var bodies []string
	for _, r := range recs {
		bodies = append(bodies, string(decodeRecord(t, r).Data[0]))
	}
	want := []string{"before", "after " + tests[0].name, "after " + tests[1].name}
	if fmt.Sprint(bodies) != fmt.Sprint(want) {
		t.Errorf("stored %q, want %q", bodies, want)
	}
}
