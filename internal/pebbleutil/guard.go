package pebbleutil

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoSpace is wrapped by the errors of writes refused because the free
// space of a store's directory is below its reserve.
var ErrNoSpace = errors.New("insufficient disk space")

// Guard defaults.
const (
	// DefaultReserve is the free space below which writes are refused. It
	// leaves room for the writes already admitted, Pebble's flushes and
	// compactions, and the other stores on the same disk.
	DefaultReserve = 64 << 20
	// DefaultInterval is how long a free-space reading is trusted, so that
	// a write pays for a statfs call at most once per interval.
	DefaultInterval = 250 * time.Millisecond
)

// GuardOptions configures a Guard. The zero value is the default guard.
type GuardOptions struct {
	// Reserve is the free space, in bytes, below which writes are refused;
	// 0 means DefaultReserve and a negative value turns the guard off.
	Reserve int64
	// Interval is how long a reading is reused; 0 means DefaultInterval
	// and a negative value reads the free space at every check (tests).
	Interval time.Duration
	// StatFS returns the bytes available to the process in dir; nil means
	// the file system's own figure (statfs). Tests inject a fake.
	StatFS func(dir string) (uint64, error)
}

// Guard tells a store whether its writes may proceed. A nil *Guard is off:
// it lets everything through. It is safe for concurrent use.
type Guard struct {
	dir       string
	reserve   uint64
	resume    uint64 // free space at which refused writes resume
	interval  time.Duration
	statfs    func(string) (uint64, error)
	log       *slog.Logger
	component string

	// next is when the cached verdict expires (UnixNano); verdict is nil
	// while writes may proceed, the refusal error otherwise.
	next    atomic.Int64
	verdict atomic.Pointer[error]

	mu         sync.Mutex // serialises refreshes and the log lines
	refusing   bool
	statFailed bool
}

// NewGuard returns the guard of a store in dir, or nil (off) when
// opts.Reserve is negative or the store is in memory (inMemory) and no
// StatFS is injected. component names the store in log lines; a nil log
// means slog.Default().
func NewGuard(dir string, inMemory bool, opts GuardOptions, log *slog.Logger, component string) *Guard {
	if opts.Reserve < 0 || (inMemory && opts.StatFS == nil) {
		return nil
	}
	if log == nil {
		log = slog.Default()
	}
	g := &Guard{
		dir:       dir,
		reserve:   uint64(opts.Reserve),
		interval:  opts.Interval,
		statfs:    opts.StatFS,
		log:       log,
		component: component,
	}
	if g.reserve == 0 {
		g.reserve = DefaultReserve
	}
	// A little more than the reserve must be free again before writes
	// resume, so that a disk hovering at the reserve does not turn
	// refusals on and off (and log them) at every check.
	g.resume = g.reserve + g.reserve/16
	if g.interval == 0 {
		g.interval = DefaultInterval
	}
	if g.statfs == nil {
		g.statfs = freeBytes
	}
	return g
}

// Check returns nil when a write may proceed and otherwise an error
// wrapping ErrNoSpace that names the free space, the directory and the
// reserve. Between refreshes it costs two atomic loads.
func (g *Guard) Check() error {
	if g == nil {
		return nil
	}
	now := time.Now().UnixNano()
	if now < g.next.Load() {
		if v := g.verdict.Load(); v != nil {
			return *v
		}
		return nil
	}
	return g.refresh(now)
}

// refresh reads the free space and updates the verdict. Callers arriving
// while another refreshes wait for its reading rather than making their
// own.
func (g *Guard) refresh(now int64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now < g.next.Load() {
		if v := g.verdict.Load(); v != nil {
			return *v
		}
		return nil
	}
	free, err := g.statfs(g.dir)
	var verdict error
	switch {
	case err != nil:
		// The guard only prevents a full disk; not knowing the free
		// space is no reason to stop writing. Pebble reports real
		// errors itself.
		if !g.statFailed {
			g.statFailed = true
			g.log.Warn("pebble store: cannot read the free disk space; writes are not guarded", "component", g.component, "dir", g.dir, "err", err)
		}
		if g.refusing {
			g.refusing = false
			g.log.Info("pebble store: accepting writes again", "component", g.component, "dir", g.dir)
		}
	case free < g.reserve || (g.refusing && free < g.resume):
		verdict = fmt.Errorf("%w: %d bytes free in %s, reserve %d", ErrNoSpace, free, g.dir, g.reserve)
		if !g.refusing {
			g.refusing = true
			g.log.Error("pebble store: refusing writes until disk space returns", "component", g.component, "err", verdict)
		}
	default:
		g.statFailed = false
		if g.refusing {
			g.refusing = false
			g.log.Info("pebble store: disk space returned; accepting writes again", "component", g.component, "dir", g.dir, "free", free)
		}
	}
	if verdict == nil {
		g.verdict.Store(nil)
	} else {
		g.verdict.Store(&verdict)
	}
	// Store the expiry last: a reader that sees the new expiry sees the
	// new verdict.
	g.next.Store(now + int64(max(g.interval, 0)))
	return verdict
}
