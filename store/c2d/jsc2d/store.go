package jsc2d

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/jskv"
	"amqphub/store/c2d"
)

// DefaultBucket names the key-value bucket when Options.Bucket is empty.
const DefaultBucket = "AMQPHUB_c2d"

// Options configures Open.
type Options struct {
	// Bucket is the key-value bucket of the queues; the bodies stream is
	// Bucket+"_bodies" with subjects Bucket+".bodies.<queue token>".
	// Default DefaultBucket.
	Bucket string
	// Replicas is the replication factor of the bucket and the stream
	// (default 1).
	Replicas int
	// NodeID names this node; feedback batches it took are released when a
	// store with the same NodeID opens again (the service link that held
	// them died with the process). Default "node".
	NodeID string
	// Timeout bounds each NATS request of an operation, so that calls fail
	// instead of hanging while NATS is unreachable. Default 5 s.
	Timeout time.Duration
	// SweepInterval is how often the background sweeper runs when
	// Config.ManualSweep is false. Default 1 s.
	SweepInterval time.Duration
	// MaxValueBytes bounds a queue value; the oldest feedback records of a
	// queue are dropped (with a warning) beyond it. Default 768 KiB, under
	// NATS's default 1 MiB payload limit.
	MaxValueBytes int
	// InlineBodyBytes is the largest body kept in the queue value itself
	// instead of the bodies stream: a small body stored inline saves three
	// JetStream requests per message (store, read, delete), a large one
	// would make every rewrite of its queue value heavy. Default 1 KiB;
	// negative keeps every body in the stream.
	InlineBodyBytes int
	// Config holds the IoT Hub limits, the clock and the logger.
	Config c2d.Config
}

// Store is the C2D store on NATS JetStream. It implements c2d.Store and
// the hub's maintenance methods (Release, Generations, DropGenerations,
// AvailableFeedback). See the package documentation for the design.
type Store struct {
	cfg     c2d.Config
	opts    Options
	log     *slog.Logger
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	bodies  jetstream.Stream
	bodyPfx string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	bg     sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	cache      map[string]*entry     // queue id → latest known value
	fbQueues   map[string]*entry     // the cached queues holding feedback records
	queues     map[string]*committer // queues with operations waiting or being written
	fbWatchers map[chan struct{}]struct{}
	batches    map[c2d.LockToken]*batch
	retiredFb  map[c2d.LockToken]struct{}
	retiredFbQ []c2d.LockToken

	applied  atomic.Uint64 // highest revision the watcher delivered
	rewatch  chan struct{}
	stuckAt  uint64 // background goroutine only: see checkWatch
	leaseRev uint64 // revision of the sweeper lease while this node holds it; background goroutine only

	inflight  sync.WaitGroup
	commits   sync.WaitGroup // running committers
	closeOnce sync.Once
}

// entry is the cached value of one queue key plus node-local watch state.
type entry struct {
	rev      uint64
	v        *qval
	watchers map[chan struct{}]struct{}
	timer    *time.Timer // fires at the next lock expiry while watched
}

// batch is a feedback batch this node handed out.
type batch struct {
	until  int64
	queues []string
}

const (
	maxAttempts   = 64
	retiredFbKeep = 1 << 14
	leaseKey      = "lease.sweep"
	leaseFor      = 5 * time.Second
)

var errConflict = errors.New("too many concurrent updates of the queue")

// Open creates (or binds to) the bucket and the bodies stream, loads every
// queue into the node-local cache and starts following changes.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Bucket == "" {
		opts.Bucket = DefaultBucket
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.NodeID == "" {
		opts.NodeID = "node"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Second
	}
	if opts.InlineBodyBytes == 0 {
		opts.InlineBodyBytes = 1 << 10
	}
	if opts.MaxValueBytes <= 0 {
		opts.MaxValueBytes = 768 << 10
	}
	cfg := opts.Config.WithDefaults()
	s := &Store{
		cfg:        cfg,
		opts:       opts,
		log:        cfg.Logger,
		js:         js,
		bodyPfx:    opts.Bucket + ".bodies.",
		cache:      make(map[string]*entry),
		fbQueues:   make(map[string]*entry),
		queues:     make(map[string]*committer),
		fbWatchers: make(map[chan struct{}]struct{}),
		batches:    make(map[c2d.LockToken]*batch),
		retiredFb:  make(map[c2d.LockToken]struct{}),
		rewatch:    make(chan struct{}, 1),
	}
	octx, cancel := context.WithTimeout(ctx, 4*opts.Timeout)
	defer cancel()
	var err error
	s.kv, err = js.CreateOrUpdateKeyValue(octx, jetstream.KeyValueConfig{
		Bucket:      opts.Bucket,
		Description: "amqphub C2D queues and feedback",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("c2d: bucket %s: %w", opts.Bucket, err)
	}
	s.bodies, err = js.CreateOrUpdateStream(octx, jetstream.StreamConfig{
		Name:        opts.Bucket + "_bodies",
		Description: "amqphub C2D message bodies",
		Subjects:    []string{s.bodyPfx + ">"},
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		AllowDirect: true,
	})
	if err != nil {
		return nil, fmt.Errorf("c2d: bodies stream: %w", err)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	w, wcancel, err := s.startWatch(octx)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.bg.Add(1)
	go s.follow(w, wcancel)
	if err := s.releaseOwnBatches(octx); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("c2d: release the feedback batches of node %s: %w", opts.NodeID, err)
	}
	s.bg.Add(1)
	go s.background()
	return s, nil
}

// startWatch starts a watcher on the whole bucket and applies the current
// values it sends first (then nil). Values older than the cache's are
// ignored, so a restarted watcher only fills what was missed.
func (s *Store) startWatch(ctx context.Context) (jetstream.KeyWatcher, context.CancelFunc, error) {
	wctx, wcancel := context.WithCancel(s.ctx)
	w, err := s.kv.WatchAll(wctx)
	if err != nil {
		wcancel()
		return nil, nil, fmt.Errorf("c2d: watch %s: %w", s.opts.Bucket, err)
	}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				wcancel()
				return nil, nil, fmt.Errorf("c2d: watch %s: closed while loading", s.opts.Bucket)
			}
			if e == nil {
				return w, wcancel, nil
			}
			s.apply(e)
		case <-ctx.Done():
			wcancel()
			return nil, nil, fmt.Errorf("c2d: load %s: %w", s.opts.Bucket, ctx.Err())
		}
	}
}

// follow applies the changes other nodes (and this one) make. When the
// health check finds the watcher stuck (its consumer lost with a server),
// it starts a new one.
func (s *Store) follow(w jetstream.KeyWatcher, wcancel context.CancelFunc) {
	defer s.bg.Done()
	for {
		restart := false
		select {
		case e, ok := <-w.Updates():
			if !ok {
				restart = true
			} else if e != nil {
				s.apply(e)
			}
		case <-s.rewatch:
			restart = true
		case <-s.ctx.Done():
			wcancel()
			return
		}
		if !restart {
			continue
		}
		wcancel()
		for {
			ctx, cancel := context.WithTimeout(s.ctx, 4*s.opts.Timeout)
			var err error
			w, wcancel, err = s.startWatch(ctx)
			cancel()
			if err == nil {
				break
			}
			s.log.Warn("c2d: restart the bucket watcher", "err", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// apply puts a watched entry into the cache.
func (s *Store) apply(e jetstream.KeyValueEntry) {
	for {
		seen := s.applied.Load()
		if e.Revision() <= seen || s.applied.CompareAndSwap(seen, e.Revision()) {
			break
		}
	}
	if e.Operation() != jetstream.KeyValuePut || !strings.HasPrefix(e.Key(), "q.") {
		return // queue keys are never deleted; the lease is not cached
	}
	// This node's own writes come back through the watcher too; the cache
	// already holds them (or something newer), so they are not decoded
	// again: decoding is most of a node's CPU under load.
	if id, err := base64.RawURLEncoding.DecodeString(e.Key()[2:]); err == nil {
		s.mu.Lock()
		c := s.cache[string(id)]
		known := c != nil && c.v != nil && c.rev >= e.Revision()
		if w := s.queues[string(id)]; !known && w != nil && w.wval != nil && bytes.Equal(w.writing, e.Value()) {
			s.putLocked(string(id), e.Revision(), w.wval)
			known = true
		}
		s.mu.Unlock()
		if known {
			return
		}
	}
	v, err := decodeQ(e.Value())
	if err != nil {
		s.log.Error("c2d: undecodable queue value", "key", e.Key(), "err", err)
		return
	}
	s.mu.Lock()
	s.putLocked(v.ID, e.Revision(), v)
	s.mu.Unlock()
}

// checkWatch restarts the watcher when the bucket holds writes it has not
// delivered at two checks in a row without progress: a consumer lost with
// a server or a connection does not always come back by itself.
func (s *Store) checkWatch(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	st, err := s.kv.Status(c)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return
	}
	last := bs.StreamInfo().State.LastSeq
	applied := s.applied.Load()
	if last <= applied {
		s.stuckAt = 0
		return
	}
	if s.stuckAt == applied {
		s.log.Warn("c2d: bucket watcher stalled, restarting it", "applied", applied, "last", last)
		s.stuckAt = 0
		select {
		case s.rewatch <- struct{}{}:
		default:
		}
		return
	}
	s.stuckAt = applied
}

// putLocked stores v at rev unless the cache already holds a newer
// revision, and signals the watchers it may concern.
func (s *Store) putLocked(id string, rev uint64, v *qval) {
	e := s.cache[id]
	if e == nil {
		e = &entry{}
		s.cache[id] = e
	} else if e.rev >= rev {
		return
	}
	e.rev, e.v = rev, v
	if len(v.Fb) > 0 {
		s.fbQueues[id] = e
	} else {
		delete(s.fbQueues, id)
	}
	now := nanos(s.cfg.Now())
	if len(e.watchers) > 0 {
		if v.hasAvailable(now) {
			notify(e.watchers)
		}
		s.armLocked(e, now)
	}
	if len(s.fbWatchers) > 0 && v.hasAvailableFb(now) {
		notify(s.fbWatchers)
	}
}

// armLocked sets e's timer to its next lock expiry, so that a watcher
// hears of the lock's end without polling. With a manual clock, Sweep
// signals instead.
func (s *Store) armLocked(e *entry, now int64) {
	if s.cfg.ManualSweep || e.v == nil {
		return
	}
	next := e.v.nextLockExpiry(now)
	if next == 0 {
		if e.timer != nil {
			e.timer.Stop()
		}
		return
	}
	d := time.Duration(next - now)
	if e.timer == nil {
		e.timer = time.AfterFunc(d, func() { s.lockExpired(e) })
	} else {
		e.timer.Reset(d)
	}
}

func (s *Store) lockExpired(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(e.watchers) == 0 || e.v == nil {
		return
	}
	now := nanos(s.cfg.Now())
	if e.v.hasAvailable(now) {
		notify(e.watchers)
	}
	s.armLocked(e, now)
}

func notify(ws map[chan struct{}]struct{}) {
	for ch := range ws {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func queueKey(id string) string { return "q." + base64.RawURLEncoding.EncodeToString([]byte(id)) }

func (s *Store) bodySubject(id string) string {
	return s.bodyPfx + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// begin admits an operation; the caller must call s.inflight.Done.
func (s *Store) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return c2d.ErrClosed
	}
	s.inflight.Add(1)
	return nil
}

// snapshot returns the cached value of id (nil if unknown) and its revision.
func (s *Store) snapshot(id string) (*qval, uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.cache[id]
	if e == nil || e.v == nil {
		return nil, 0, false
	}
	return e.v, e.rev, true
}

// fetch reads id's value from the bucket and caches it.
func (s *Store) fetch(ctx context.Context, id string) (*qval, uint64, error) {
	c, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	// From the leader: a replica that lags would hide acknowledged writes.
	rec, found, err := jskv.GetFromLeader(c, s.js.Conn(), s.kv.Bucket(), queueKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("read queue: %w", err)
	}
	if !found || rec.Deleted {
		return &qval{ID: id}, 0, nil // revision 0: the next write creates the key
	}
	rev := rec.Revision
	v, err := decodeQ(rec.Value)
	if err != nil {
		return nil, 0, err
	}
	s.mu.Lock()
	s.putLocked(id, rev, v)
	s.mu.Unlock()
	return v, rev, nil
}

// tx is what a mutation sees besides the value.
type tx struct {
	now   int64
	fresh bool // the value was just read from the bucket, not the cache
	ch    change
}

func backoff(attempt int) {
	if attempt < 2 {
		return
	}
	var b [1]byte
	_, _ = rand.Read(b[:])
	time.Sleep(time.Duration(int(b[0])%(attempt*100)+50) * time.Microsecond)
}

func (s *Store) write(ctx context.Context, id string, rev uint64, data []byte) (uint64, error) {
	c, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	if rev == 0 {
		return s.kv.Create(c, queueKey(id), data)
	}
	return s.kv.Update(c, queueKey(id), data, rev)
}

// deleteBodies removes bodies whose messages are gone. A failure only
// leaves an orphan, which the sweeper removes later.
func (s *Store) deleteBodies(seqs []uint64) {
	for _, seq := range seqs {
		c, cancel := context.WithTimeout(s.ctx, s.opts.Timeout)
		err := s.bodies.DeleteMsg(c, seq)
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) && !errors.Is(err, context.Canceled) {
			s.log.Warn("c2d: delete message body", "seq", seq, "err", err)
		}
	}
}

func newToken() []byte {
	for {
		t := make([]byte, 16)
		_, _ = rand.Read(t) // crypto/rand.Read never fails (Go ≥ 1.24)
		if tokenOf(t) != (c2d.LockToken{}) {
			return t
		}
	}
}

// Bucket returns the name of the store's key-value bucket.
func (s *Store) Bucket() string { return s.opts.Bucket }

// Close stops following the bucket and waits for running operations.
// The bucket and the stream are left as they are. Watch channels are never
// signalled again.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		for _, e := range s.cache {
			if e.timer != nil {
				e.timer.Stop()
			}
		}
		s.mu.Unlock()
		s.inflight.Wait()
		s.commits.Wait()
		// Cancelling the watcher's context ends its subscription; Stop would
		// also delete the consumer and wait for NATS, which may be gone.
		s.cancel()
		s.bg.Wait()
	})
	return nil
}

// opErr wraps err with the operation and queue.
func opErr(op, id string, err error) error {
	if id == "" {
		return fmt.Errorf("c2d: %s: %w", op, err)
	}
	return fmt.Errorf("c2d: %s on %q: %w", op, id, err)
}
