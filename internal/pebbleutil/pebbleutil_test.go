package pebbleutil

import (
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/internal/testutil"
)

func testLogger() (*slog.Logger, *testutil.LockedBuffer) {
	buf := &testutil.LockedBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func TestGuardOff(t *testing.T) {
	tests := []struct {
		name     string
		inMemory bool
		opts     GuardOptions
		off      bool
	}{
		{"negative reserve", false, GuardOptions{Reserve: -1}, true},
		{"in memory", true, GuardOptions{}, true},
		{"in memory with injected statfs", true, GuardOptions{StatFS: func(string) (uint64, error) { return 0, nil }}, false},
		{"on disk", false, GuardOptions{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewGuard(t.TempDir(), tt.inMemory, tt.opts, nil, "test")
			if (g == nil) != tt.off {
				t.Fatalf("guard off = %v, want %v", g == nil, tt.off)
			}
			if g == nil {
				if err := g.Check(); err != nil {
					t.Fatalf("nil guard Check = %v", err)
				}
			}
		})
	}
}

func TestGuardRealStatFS(t *testing.T) {
	// The test machine has more than a byte free and less than an exabyte.
	log, _ := testLogger()
	if err := NewGuard(t.TempDir(), false, GuardOptions{Reserve: 1}, log, "test").Check(); err != nil {
		t.Fatalf("Check with a 1-byte reserve: %v", err)
	}
	err := NewGuard(t.TempDir(), false, GuardOptions{Reserve: 1 << 60}, log, "test").Check()
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Check with an exabyte reserve = %v, want ErrNoSpace", err)
	}
}

func TestGuardTransitions(t *testing.T) {
	const reserve = 1600
	var free atomic.Uint64
	var calls atomic.Int64
	log, buf := testLogger()
	g := NewGuard("/data/x", false, GuardOptions{
		Reserve:  reserve,
		Interval: -1,
		StatFS: func(dir string) (uint64, error) {
			calls.Add(1)
			if dir != "/data/x" {
				t.Errorf("statfs of %q", dir)
			}
			return free.Load(), nil
		},
	}, log, "test")
	steps := []struct {
		free   uint64
		refuse bool
	}{
		{10_000, false},
		{reserve, false},    // at the reserve: still fine
		{reserve - 1, true}, // below: refusals begin
		{100, true},
		{reserve + 50, true}, // above the reserve but below the resume mark
		{reserve + reserve/16, false},
		{reserve - 1, true}, // a second outage
		{1 << 30, false},
	}
	for i, st := range steps {
		free.Store(st.free)
		err := g.Check()
		if got := errors.Is(err, ErrNoSpace); got != st.refuse {
			t.Fatalf("step %d (free %d): Check = %v, want refusal %v", i, st.free, err, st.refuse)
		}
		if st.refuse {
			want := "insufficient disk space: " + itoa(st.free) + " bytes free in /data/x, reserve 1600"
			if err.Error() != want {
				t.Fatalf("step %d: error %q, want %q", i, err, want)
			}
		}
	}
	out := buf.String()
	if n := strings.Count(out, "refusing writes"); n != 2 {
		t.Errorf("%d refusal lines, want 2 (one per outage):\n%s", n, out)
	}
	if n := strings.Count(out, "accepting writes again"); n != 2 {
		t.Errorf("%d recovery lines, want 2:\n%s", n, out)
	}
	if calls.Load() != int64(len(steps)) {
		t.Errorf("statfs called %d times, want %d with a negative interval", calls.Load(), len(steps))
	}
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

func TestGuardCachesReading(t *testing.T) {
	var calls atomic.Int64
	var free atomic.Uint64
	free.Store(1 << 30)
	g := NewGuard("d", false, GuardOptions{
		Interval: time.Hour,
		StatFS: func(string) (uint64, error) {
			calls.Add(1)
			return free.Load(), nil
		},
	}, nil, "test")
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if err := g.Check(); err != nil {
					t.Errorf("Check: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("statfs called %d times within one interval, want 1", calls.Load())
	}

	// After the interval a new reading is taken.
	g.next.Store(0)
	free.Store(1)
	if err := g.Check(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Check after the interval = %v, want ErrNoSpace", err)
	}
	if err := g.Check(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("cached refusal = %v, want ErrNoSpace", err)
	}
	if calls.Load() != 2 {
		t.Fatalf("statfs called %d times, want 2", calls.Load())
	}
}

func TestGuardStatFSErrorLetsWritesThrough(t *testing.T) {
	log, buf := testLogger()
	g := NewGuard("d", false, GuardOptions{
		Interval: -1,
		StatFS:   func(string) (uint64, error) { return 0, errors.New("boom") },
	}, log, "test")
	for range 3 {
		if err := g.Check(); err != nil {
			t.Fatalf("Check = %v, want nil when the free space is unknown", err)
		}
	}
	if n := strings.Count(buf.String(), "cannot read the free disk space"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, buf.String())
	}
}

func TestLoggerFatalfLogsOnceAndDoesNotReturn(t *testing.T) {
	log, buf := testLogger()
	l := NewLogger(log, "twins")
	var codes []int
	var mu sync.Mutex
	l.once = &sync.Once{}
	l.exit = func(code int) {
		mu.Lock()
		codes = append(codes, code)
		mu.Unlock()
		runtime.Goexit() // stands in for the process ending
	}
	returned := make(chan bool, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Fatalf("fatal commit error: %v", "no space left on device")
		returned <- true
	}()
	<-done
	select {
	case <-returned:
		t.Fatal("Fatalf returned")
	default:
	}
	mu.Lock()
	defer mu.Unlock()
	if len(codes) != 1 || codes[0] == 0 {
		t.Fatalf("exit codes %v, want one non-zero", codes)
	}
	out := buf.String()
	if strings.Count(out, "level=ERROR") != 1 || !strings.Contains(out, "no space left on device") || !strings.Contains(out, "component=twins") {
		t.Fatalf("log does not hold the cause once:\n%s", out)
	}

	l.Infof("routine %d", 1)
	l.Errorf("trouble %d", 2)
	out = buf.String()
	if !strings.Contains(out, "level=DEBUG msg=\"pebble: routine 1\"") || !strings.Contains(out, "level=ERROR msg=\"pebble: trouble 2\"") {
		t.Fatalf("Infof/Errorf lines missing:\n%s", out)
	}
}
