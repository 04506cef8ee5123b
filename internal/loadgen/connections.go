package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// ConnectionsConfig configures the connections scenario.
type ConnectionsConfig struct {
	// Connections is how many device connections to open. Default 1000.
	Connections int
	// Links are the links each device opens: "events" (a sender to its
	// events address) and "c2d" (a receiver on its cloud-to-device
	// address). Default events.
	Links []string
	// Hold is how long the connections stay open once all are. The hub's
	// memory is read at its end. Default 10 s.
	Hold time.Duration
	// Concurrency bounds connections being opened at once. Default 64.
	Concurrency int
	// Client is ClientGoAMQP (default) or ClientRaw.
	Client string
	// Memory returns the hub's memory in bytes; MemorySource says what it
	// reads. Nil skips the memory figures.
	Memory       func() (int64, error)
	MemorySource string
	// Breakdown, if set, returns the hub's live Go heap and goroutine
	// stack bytes (after a collection), read after Memory each time; the
	// report then splits the growth per connection into the two.
	Breakdown func() (heap, stack int64, err error)
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
}

// RunConnections opens Connections authenticated device connections with
// their links, holds them, and reports how fast they opened and what the
// hub's memory grew by per connection.
func RunConnections(ctx context.Context, t *Target, cfg ConnectionsConfig) (*Report, error) {
	if cfg.Connections == 0 {
		cfg.Connections = 1000
	}
	if len(cfg.Links) == 0 {
		cfg.Links = []string{"events"}
	}
	if cfg.Hold == 0 {
		cfg.Hold = 10 * time.Second
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 64
	}
	if cfg.Connections < 0 || cfg.Hold < 0 || cfg.Concurrency < 0 {
		return nil, errors.New("loadgen: connections, hold and concurrency must be positive")
	}
	for _, l := range cfg.Links {
		if l != "events" && l != "c2d" {
			return nil, fmt.Errorf("loadgen: unknown link %q (want events or c2d)", l)
		}
	}
	if t.Hub == nil {
		return nil, errors.New("loadgen: the connections scenario needs an IoT hub target")
	}
	ids, err := t.identities(ctx, cfg.Connections)
	if err != nil {
		return nil, err
	}
	rep := &Report{
		Scenario:    "connections",
		Target:      t.String(),
		Client:      clientName(cfg.Client),
		Started:     time.Now(),
		Connections: cfg.Connections,
		TLS:         t.TLS != nil,
		HubMemory:   cfg.MemorySource,
	}
	if cfg.Memory != nil {
		if rep.HubBaseline, err = cfg.Memory(); err != nil {
			return nil, fmt.Errorf("loadgen: reading the hub's memory: %w", err)
		}
	}
	var heap0, stack0 int64
	if cfg.Breakdown != nil {
		if heap0, stack0, err = cfg.Breakdown(); err != nil {
			return nil, fmt.Errorf("loadgen: reading the hub's heap and stacks: %w", err)
		}
	}
	held := make([]func(), len(ids))
	rec := newRecorder()
	var opened atomic.Int64
	stop := startProgress(cfg.Progress, time.Second, func(el time.Duration) string {
		return fmt.Sprintf("connections %5.1fs  open %d of %d", el.Seconds(), opened.Load(), len(ids))
	})
	start := time.Now()
	err = parallel(ctx, len(ids), cfg.Concurrency, func(ctx context.Context, i int) error {
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		closeFn, err := openDevice(cctx, t, ids[i], cfg.Client, cfg.Links)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		rec.record(time.Since(t0))
		held[i] = closeFn
		opened.Add(1)
		return nil
	})
	openTime := time.Since(start)
	rep.Opened = int(opened.Load())
	rep.OpenPerSec = float64(rep.Opened) / openTime.Seconds()
	rep.ConnectLatency = summarize(merged([]*recorder{rec}))
	if err == nil {
		select {
		case <-time.After(cfg.Hold):
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err == nil && cfg.Memory != nil {
		if rep.HubLoaded, err = cfg.Memory(); err != nil {
			err = fmt.Errorf("loadgen: reading the hub's memory: %w", err)
		} else if rep.Opened > 0 {
			rep.BytesPerConn = float64(rep.HubLoaded-rep.HubBaseline) / float64(rep.Opened)
		}
	}
	if err == nil && cfg.Breakdown != nil && rep.Opened > 0 {
		heap, stack, berr := cfg.Breakdown()
		if berr != nil {
			err = fmt.Errorf("loadgen: reading the hub's heap and stacks: %w", berr)
		} else {
			rep.HeapPerConn = float64(heap-heap0) / float64(rep.Opened)
			rep.StackPerConn = float64(stack-stack0) / float64(rep.Opened)
		}
	}
	stop()
	rep.Seconds = time.Since(start).Seconds()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range held {
		if c != nil {
			wg.Add(1)
			sem <- struct{}{}
			go func() { defer wg.Done(); c(); <-sem }()
		}
	}
	wg.Wait()
	if err != nil {
		return rep, err
	}
	return rep, nil
}

// openDevice connects one device and attaches its links; the returned
// function closes it.
func openDevice(ctx context.Context, t *Target, id Identity, client string, links []string) (func(), error) {
	switch client {
	case ClientRaw:
		c, err := rawDial(ctx, t, id.Login, 4<<10)
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			switch l {
			case "events":
				_, err = c.attachSender(id.EventsAddress, 1, true, func(time.Time, error) {})
			case "c2d":
				_, err = c.attachReceiver(id.C2DAddress, nil, 10, nil)
			}
			if err != nil {
				c.nc.Close()
				return nil, err
			}
		}
		c.start()
		return c.close, nil
	case ClientGoAMQP, "":
		conn, err := t.dialAMQP(ctx, id.Login, false)
		if err != nil {
			return nil, err
		}
		sess, err := conn.NewSession(ctx, nil)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("begin session: %w", err)
		}
		for _, l := range links {
			switch l {
			case "events":
				_, err = sess.NewSender(ctx, id.EventsAddress, nil)
			case "c2d":
				_, err = sess.NewReceiver(ctx, id.C2DAddress, &goamqp.ReceiverOptions{Credit: 10})
			}
			if err != nil {
				conn.Close()
				return nil, fmt.Errorf("attach %s link: %w", l, err)
			}
		}
		return func() { conn.Close() }, nil
	}
	return nil, fmt.Errorf("loadgen: unknown client %q", client)
}

// ProcessRSS returns the resident memory of process pid (VmRSS in
// /proc/<pid>/status), in bytes.
func ProcessRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("loadgen: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("loadgen: parsing %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("loadgen: reading /proc/%d/status: %w", pid, err)
	}
	return 0, fmt.Errorf("loadgen: /proc/%d/status has no VmRSS line", pid)
}

// PprofMemory returns a function that reads the live heap and goroutine
// stack bytes of a Go process serving net/http/pprof at base (such as
// http://127.0.0.1:6060, for a hub started with AMQPHUB_PPROF_ADDR). Each
// read forces a collection in that process, so take RSS first.
func PprofMemory(base string) func() (heap, stack int64, err error) {
	url := strings.TrimSuffix(base, "/") + "/debug/pprof/heap?debug=1&gc=1"
	return func() (int64, int64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, 0, fmt.Errorf("loadgen: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, 0, fmt.Errorf("loadgen: GET %s: %s", url, resp.Status)
		}
		return parseMemStats(resp.Body)
	}
}

// parseMemStats reads "# HeapAlloc = N" and "# Stack = inuse / sys" from a
// debug=1 heap profile.
func parseMemStats(r io.Reader) (heap, stack int64, err error) {
	var gotHeap, gotStack bool
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			heap, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			gotHeap = err == nil
		} else if v, ok := strings.CutPrefix(line, "# Stack = "); ok {
			in, _, _ := strings.Cut(v, "/")
			stack, err = strconv.ParseInt(strings.TrimSpace(in), 10, 64)
			gotStack = err == nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("loadgen: reading memory statistics: %w", err)
	}
	if !gotHeap || !gotStack {
		return 0, 0, errors.New("loadgen: the heap profile has no HeapAlloc or Stack line")
	}
	return heap, stack, nil
}

// InProcessMemory returns the memory this process's Go runtime holds
// from the OS (after a collection), for an in-process hub. It counts the
// load generator's own connections too.
func InProcessMemory() (int64, error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.Sys - ms.HeapReleased), nil
}
