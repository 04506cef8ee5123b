package c2d

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/pebbleutil"
)

// PebbleOptions configures OpenPebble.
type PebbleOptions struct {
	Config
	// InMemory keeps the database in memory (vfs.NewMem); the directory name
	// is then only a name. Nothing survives the process.
	InMemory bool
	// FS overrides the file system, for tests that reopen or crash an
	// in-memory file system. It takes precedence over InMemory.
	FS vfs.FS
	// NoSync skips the fsync of each group commit: a process crash loses
	// nothing, an OS crash loses the last commits. For benchmarks and tests.
	NoSync bool
	// DiskGuard sets the free space below which operations that write are
	// refused with pebbleutil.ErrNoSpace (default
	// pebbleutil.DefaultReserve). The guard is off for in-memory stores
	// (InMemory or FS) unless a StatFS is injected.
	DiskGuard pebbleutil.GuardOptions

	// testHookBeforeCommit runs in the committer before each commit.
	testHookBeforeCommit func()
}

// sweepRetry is how long the sweeper waits before trying again when the
// disk has no room for the expiries it has to write.
const sweepRetry = time.Second

// PebbleStore is the embedded Store, on a Pebble database of its own.
//
// Lock order: mu is the only lock; no I/O happens under it except appending
// to the in-memory batch being gathered. Pebble commits, Pebble reads and
// channel sends that may block all happen outside mu.
type PebbleStore struct {
	cfg      Config
	db       *pebble.DB
	log      *slog.Logger
	writeOpt *pebble.WriteOptions
	guard    *pebbleutil.Guard // nil: writes are not guarded

	mu         sync.Mutex
	closed     bool
	failed     error // first commit error; the store refuses work after it
	cur        *commitBatch
	lastSeq    uint64
	queues     map[string]*queue
	byToken    map[LockToken]*msg
	retired    retiredRing
	fb         []*fbRecord // in sequence order, with removed entries compacted lazily
	fbRemoved  int
	fbBatches  map[LockToken]*fbBatch
	fbWatchers map[chan struct{}]struct{}
	timers     timerHeap

	inflight   sync.WaitGroup // operations that may still touch db
	kickCh     chan struct{}
	pokeCh     chan struct{}
	stopCommit chan struct{}
	commitDone chan struct{}
	stopSweep  chan struct{}
	sweepDone  chan struct{}
	closeOnce  sync.Once
	closeErr   error

	commits atomic.Uint64 // synced commits, for tests and benchmarks
	// testHookBeforeCommit runs in the committer before each commit.
	testHookBeforeCommit func()
}

var _ Store = (*PebbleStore)(nil)

// commitBatch gathers the writes of many operations into one synced commit.
type commitBatch struct {
	b        *pebble.Batch
	ops      int
	usesSeq  bool     // the high-water sequence number must be written
	after    []func() // run under mu once the batch is durable
	buildErr error
	done     chan struct{}
	err      error
}

type queue struct {
	id        string
	msgs      []*msg // ascending seq
	minExpiry time.Time
	watchers  map[chan struct{}]struct{}
}

type msg struct {
	q           *queue
	seq         uint64
	h           msgHeader
	st          msgState // st.token zero: not locked
	hasStateKey bool
	committed   bool // the enqueue is durable; only then is it lockable
	removed     bool
	expiry      timer
	lock        timer
}

type fbRecord struct {
	seq        uint64
	sf         storedFeedback
	committed  bool
	removed    bool
	lockedBy   *fbBatch
	deliveries int
	expiry     timer
}

type fbBatch struct {
	token       LockToken
	lockedUntil time.Time
	recs        []*fbRecord
	lock        timer
}

// OpenPebble opens (or creates) the store in dir and rebuilds its in-memory
// index from the database.
func OpenPebble(dir string, opts PebbleOptions) (*PebbleStore, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := opts.Config.WithDefaults()
	po := &pebble.Options{Logger: pebbleutil.NewLogger(cfg.Logger, "c2d")}
	switch {
	case opts.FS != nil:
		po.FS = opts.FS
	case opts.InMemory:
		po.FS = vfs.NewMem()
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("c2d: open pebble %q: %w", dir, err)
	}
	s := &PebbleStore{
		cfg:        cfg,
		db:         db,
		log:        cfg.Logger,
		writeOpt:   pebble.Sync,
		queues:     make(map[string]*queue),
		byToken:    make(map[LockToken]*msg),
		fbBatches:  make(map[LockToken]*fbBatch),
		fbWatchers: make(map[chan struct{}]struct{}),
		kickCh:     make(chan struct{}, 1),
		pokeCh:     make(chan struct{}, 1),
		stopCommit: make(chan struct{}),
		commitDone: make(chan struct{}),
		stopSweep:  make(chan struct{}),
		sweepDone:  make(chan struct{}),
	}
	if opts.NoSync {
		s.writeOpt = pebble.NoSync
	}
	s.guard = pebbleutil.NewGuard(dir, po.FS != nil, opts.DiskGuard, cfg.Logger, "c2d")
	s.testHookBeforeCommit = opts.testHookBeforeCommit
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("c2d: load %q: %w", dir, err)
	}
	s.cur = s.newCommitBatch()
	go s.commitLoop()
	if cfg.ManualSweep {
		close(s.sweepDone)
	} else {
		go s.sweepLoop()
	}
	return s, nil
}

// load rebuilds the in-memory state. Keys sort as g < f < m < s, so every
// message is known before its state key is read.
func (s *PebbleStore) load() error {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	defer it.Close()
	var orphans [][]byte
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) == 0 {
			return fmt.Errorf("empty key: %w", errCorrupt)
		}
		switch k[0] {
		case prefixGlobal:
			if !bytes.Equal(k, keyHighSeq) || len(v) != 8 {
				return fmt.Errorf("key %q: %w", k, errCorrupt)
			}
			s.lastSeq = max(s.lastSeq, binary.BigEndian.Uint64(v))
		case prefixFeedback:
			seq, err := parseFeedbackKey(k)
			if err != nil {
				return err
			}
			sf, err := decodeFeedback(v)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			s.lastSeq = max(s.lastSeq, seq)
			fr := &fbRecord{seq: seq, sf: sf, committed: true}
			fr.expiry = timer{kind: timerFbExpiry, idx: -1, fr: fr}
			s.fb = append(s.fb, fr)
			s.timers.schedule(&fr.expiry, sf.expiresAt)
		case prefixMessage:
			qid, seq, err := parseQueueKey(k)
			if err != nil {
				return err
			}
			h, _, err := decodeMessage(v)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			s.lastSeq = max(s.lastSeq, seq)
			q := s.queueLocked(qid)
			m := newMsg(q, seq, h)
			m.committed = true
			q.addMsg(m)
			s.timers.schedule(&m.expiry, h.expiresAt)
		case prefixState:
			qid, seq, err := parseQueueKey(k)
			if err != nil {
				return err
			}
			st, err := decodeState(v)
			if err != nil {
				return fmt.Errorf("key %q: %w", k, err)
			}
			m := s.findMsgLocked(qid, seq)
			if m == nil {
				// A state without its message cannot be produced by this
				// code (they are deleted together); tolerate and clean it.
				orphans = append(orphans, bytes.Clone(k))
				continue
			}
			m.st = st
			m.hasStateKey = true
			if !st.token.IsZero() {
				s.byToken[st.token] = m
				s.timers.schedule(&m.lock, st.lockedUntil)
			}
		default:
			return fmt.Errorf("key %q: unknown prefix: %w", k, errCorrupt)
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	if len(orphans) > 0 {
		b := s.db.NewBatch()
		for _, k := range orphans {
			if err := b.Delete(k, nil); err != nil {
				return fmt.Errorf("delete orphan state: %w", err)
			}
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("delete orphan state: %w", err)
		}
		s.log.Warn("c2d: removed orphan delivery states", "count", len(orphans))
	}
	return nil
}

func newMsg(q *queue, seq uint64, h msgHeader) *msg {
	m := &msg{q: q, seq: seq, h: h}
	m.expiry = timer{kind: timerMsgExpiry, idx: -1, m: m}
	m.lock = timer{kind: timerMsgLock, idx: -1, m: m}
	return m
}

func (s *PebbleStore) newCommitBatch() *commitBatch {
	return &commitBatch{b: s.db.NewBatch(), done: make(chan struct{})}
}

// Commits reports how many group commits the store has made. With many
// concurrent callers it grows far slower than the number of operations.
func (s *PebbleStore) Commits() uint64 { return s.commits.Load() }

// writable admits an operation that may write: it fails with ErrNoSpace
// while the disk is below its reserve. It is called before mu is taken and
// before anything changes in memory, because the in-memory state is updated
// as the batch is gathered: a batch refused later could not be taken back,
// memory and disk would disagree, and the store would have to refuse all
// work until reopened. So the committer itself never refuses a batch (the
// reserve is what the admitted writes consume), refused callers simply fail,
// and the committer goes on with the others.
func (s *PebbleStore) writable() error {
	return s.guard.Check()
}

// begin admits an operation. It must be called with mu held; on success the
// caller must call s.inflight.Done when it no longer touches the database.
func (s *PebbleStore) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed {
		return ErrClosed
	}
	if s.failed != nil {
		return fmt.Errorf("store failed after a write error, reopen it: %w", s.failed)
	}
	s.inflight.Add(1)
	return nil
}

func (s *PebbleStore) set(k, v []byte) {
	if err := s.cur.b.Set(k, v, nil); err != nil && s.cur.buildErr == nil {
		s.cur.buildErr = err
	}
	s.cur.ops++
}

func (s *PebbleStore) del(k []byte) {
	if err := s.cur.b.Delete(k, nil); err != nil && s.cur.buildErr == nil {
		s.cur.buildErr = err
	}
	s.cur.ops++
}

// afterCommit runs f under mu once the batch now being gathered is durable.
func (s *PebbleStore) afterCommit(f func()) { s.cur.after = append(s.cur.after, f) }

// release unlocks mu and hands the gathered batch to the committer. It
// returns the batch to wait on, or nil when the operation wrote nothing.
func (s *PebbleStore) release() *commitBatch {
	cb := s.cur
	if cb.ops == 0 {
		cb = nil
	}
	s.mu.Unlock()
	if cb != nil {
		select {
		case s.kickCh <- struct{}{}:
		default:
		}
	}
	return cb
}

// releaseAndWait is release followed by waiting for durability.
func (s *PebbleStore) releaseAndWait() error {
	cb := s.release()
	if cb == nil {
		return nil
	}
	<-cb.done
	return cb.err
}

// commitLoop is the single committer: while one batch is being fsynced the
// next one gathers every operation that arrives, so the number of fsyncs
// adapts to the load without any timer.
func (s *PebbleStore) commitLoop() {
	defer close(s.commitDone)
	for {
		stopping := false
		select {
		case <-s.kickCh:
		case <-s.stopCommit:
			stopping = true
		}
		for s.commitOne() {
		}
		if stopping {
			return
		}
	}
}

// commitOne commits the gathered batch, if any, and reports whether it did.
func (s *PebbleStore) commitOne() bool {
	s.mu.Lock()
	cb := s.cur
	if cb.ops == 0 {
		s.mu.Unlock()
		return false
	}
	if cb.usesSeq {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], s.lastSeq)
		if err := cb.b.Set(keyHighSeq, v[:], nil); err != nil && cb.buildErr == nil {
			cb.buildErr = err
		}
	}
	failed := s.failed
	s.cur = s.newCommitBatch()
	s.mu.Unlock()

	if s.testHookBeforeCommit != nil {
		s.testHookBeforeCommit()
	}
	err := failed
	if err == nil {
		err = cb.buildErr
	}
	if err == nil {
		err = cb.b.Commit(s.writeOpt)
		s.commits.Add(1)
	}
	s.mu.Lock()
	if err != nil {
		if s.failed == nil {
			s.failed = err
			s.log.Error("c2d: commit failed; the store refuses further work until reopened", "err", err)
		}
	} else {
		for _, f := range cb.after {
			f()
		}
	}
	s.mu.Unlock()
	if err != nil {
		cb.err = fmt.Errorf("commit: %w", err)
	}
	_ = cb.b.Close()
	close(cb.done)
	return true
}

// sweepLoop applies expiries at their deadline when the store owns the
// clock. It sleeps until the earliest deadline and is poked when an earlier
// one is scheduled.
func (s *PebbleStore) sweepLoop() {
	defer close(s.sweepDone)
	t := newStoppedTimer()
	defer t.Stop()
	for {
		s.mu.Lock()
		wait, has := s.nextDeadlineLocked()
		s.mu.Unlock()
		if has && wait <= 0 {
			if err := s.Sweep(context.Background()); err != nil {
				if errors.Is(err, pebbleutil.ErrNoSpace) {
					// Expiries wait for space (the guard logged it);
					// operations meanwhile see expired messages as such.
					t.Reset(sweepRetry)
					select {
					case <-t.C:
					case <-s.stopSweep:
						return
					}
					continue
				}
				if !errors.Is(err, ErrClosed) {
					s.log.Error("c2d: sweep failed", "err", err)
				}
				<-s.stopSweep
				return
			}
			continue
		}
		if has {
			t.Reset(wait)
		}
		select {
		case <-t.C:
		case <-s.pokeCh:
			t.Stop()
		case <-s.stopSweep:
			return
		}
	}
}

func newStoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// nextDeadlineLocked returns how long until the earliest deadline.
func (s *PebbleStore) nextDeadlineLocked() (time.Duration, bool) {
	if len(s.timers) == 0 {
		return 0, false
	}
	return s.timers[0].at.Sub(s.cfg.Now()), true
}

// poke tells the sweeper an earlier deadline exists.
func (s *PebbleStore) poke() {
	select {
	case s.pokeCh <- struct{}{}:
	default:
	}
}

func (s *PebbleStore) scheduleLocked(t *timer, at time.Time) {
	if s.timers.schedule(t, at) {
		s.poke()
	}
}

// newToken returns a random token not in use anywhere in the store.
func (s *PebbleStore) newTokenLocked() LockToken {
	for {
		var t LockToken
		_, _ = rand.Read(t[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
		if t.IsZero() || s.byToken[t] != nil || s.fbBatches[t] != nil || s.retired.has(t) {
			continue
		}
		return t
	}
}

// nextSeqLocked hands out the next sequence number; the committer persists
// the high-water mark with the batch that uses it.
func (s *PebbleStore) nextSeqLocked() uint64 {
	s.lastSeq++
	s.cur.usesSeq = true
	return s.lastSeq
}

// Close flushes pending writes, stops the background goroutines and closes
// the database. Operations still running finish first; later ones get
// ErrClosed. Watch channels are left open and never signalled again.
func (s *PebbleStore) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stopSweep)
		<-s.sweepDone
		s.inflight.Wait()
		close(s.stopCommit)
		<-s.commitDone
		s.mu.Lock()
		failed := s.failed
		s.mu.Unlock()
		_ = s.cur.b.Close()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("c2d: close pebble: %w", err)
		} else if failed != nil {
			s.closeErr = fmt.Errorf("c2d: closed after a write error: %w", failed)
		}
	})
	return s.closeErr
}

// retiredRing remembers the most recent tokens whose lock was lost rather
// than settled, so that settling them reports ErrLockLost, not ErrNotFound.
type retiredRing struct {
	owner map[LockToken]retiredOwner
	ring  []LockToken
	next  int
}

type retiredOwner struct {
	queueID  string
	feedback bool
}

const retiredCap = 1 << 16

func (r *retiredRing) add(t LockToken, o retiredOwner) {
	if r.owner == nil {
		r.owner = make(map[LockToken]retiredOwner)
	}
	if len(r.ring) < retiredCap {
		r.ring = append(r.ring, t)
	} else {
		delete(r.owner, r.ring[r.next])
		r.ring[r.next] = t
		r.next = (r.next + 1) % retiredCap
	}
	r.owner[t] = o
}

func (r *retiredRing) has(t LockToken) bool {
	_, ok := r.owner[t]
	return ok
}

func (r *retiredRing) lookup(t LockToken) (retiredOwner, bool) {
	o, ok := r.owner[t]
	return o, ok
}
