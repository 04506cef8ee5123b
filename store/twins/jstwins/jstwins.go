// Package jstwins is a twins.Store on a NATS JetStream key-value bucket, for
// hubs that run as several stateless nodes: every node reads and writes the
// same replicated bucket, and every node announces every desired-property
// change, whichever node wrote it.
//
// # Layout
//
// One bucket, keeping Options.History revisions per key. A device twin is
// the key t.<dev>, a module twin t.<dev>.<mod>, where each token is the id
// in unpadded base64url (ids may hold characters keys forbid). A value is one format byte, the last
// desired patch with the desired $version it produced, and the twin in the
// record form the Pebble backend uses (twins.EncodeRecord).
//
// # Cache and watch
//
// Open follows the bucket's stream with an ordered consumer (last value
// per key, then every new message) and keeps every key's latest value (raw
// bytes, so memory is about the bucket's size; deleted keys leave a small
// tombstone) and revision. Get decodes the cached value: a node reads its
// own writes at once and other nodes' writes as soon as its watch
// delivered them (usually within a millisecond or two).
//
// The consumer recovers from most failures by itself; a watchdog compares
// the stream's last sequence with what the watch delivered every second
// and replaces a watch that stopped making progress (seen when the NATS
// server holding the consumer was killed), resuming after the last
// delivered revision. Announcements are then late by a few seconds, never
// lost: every key changed meanwhile is delivered.
//
// Writes are read-modify-write with compare-and-set: the cached value is
// patched with the same functions the Pebble backend uses and written with
// kv.Update at its revision (kv.Create when absent). If another node wrote
// in between, the key is read again from the bucket and the patch applied
// again (If-Match is checked against that fresh value) until the timeout
// or maxAttempts; then the write fails with ErrContended. Writers on
// one node are serialized per twin (striped locks), so they do not
// conflict with each other.
//
// # Desired-property announcements
//
// Every value a node learns of (its own write acknowledged by JetStream,
// the watch, or a re-read after a conflict) goes through one place, under
// the key's lock, that keeps the highest revision seen per key and ignores
// older ones. When the new value's desired $version is higher than the one
// the node knew, it announces a DesiredChange:
//
//   - if the version is exactly one higher and the value carries the patch
//     that produced it, that patch (the same patch the writer announced);
//   - otherwise (the node missed versions: the stream keeps only
//     Options.History values per key and a watch that lagged behind a
//     burst of writes, even for milliseconds, never sees the superseded
//     ones; or a re-read after a conflict jumped ahead) the merge patch
//     from the desired properties it knew to the new ones (twins.Diff, with
//     nulls for removed properties). Devices merge a patch into their
//     desired properties, so the result is the same state; only the
//     intermediate versions are not announced.
//
// So each desired version is announced at most once per node, in revision
// order per twin, after JetStream acknowledged it (durable on the stream's
// replicas). A local write's change is announced once, before Update
// returns, normally on the writer's goroutine (on the watch's if the watch
// delivered the value first). Values present when Open starts are not
// announced.
//
// # Unreachable NATS
//
// Every call fails at once with ErrUnavailable while the NATS connection
// is not connected, and every request is bounded by Options.Timeout.
// Requests nobody answered (the stream has no leader during an election)
// are retried within that bound. A write that timed out may still have
// been applied; other nodes and this one then announce it when their
// watches deliver it.
//
// Durability is JetStream's: a write is acknowledged once the stream's
// replicas hold it (JetStream flushes its files to disk periodically,
// not per message: with Replicas 1 a machine crash can lose the last
// writes).
package jstwins

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/jskv"
	"amqphub/store/twins"
)

// Defaults for Options fields left at zero.
const (
	DefaultBucket  = "AMQPHUB_twins"
	DefaultTimeout = 5 * time.Second
	DefaultHistory = 1
)

// maxAttempts bounds the compare-and-set attempts of one write (besides
// Options.Timeout). It is high because a node writing one twin
// back-to-back wins every race against a node that must re-read first:
// the loser has to outlast the other's burst.
const maxAttempts = 500

// The bucket's stream and the header of its delete and purge markers, as
// JetStream's key-value convention names them.
const (
	streamPrefix = "KV_"
	kvOperation  = "KV-Operation"
)

// watchHeartbeat is how often the watch's consumer shows it is alive when
// idle; a watch whose consumer vanished (its server died) is recreated
// after two missed heartbeats.
const watchHeartbeat = time.Second

// watchCheck is the watchdog's period.
const watchCheck = time.Second

// loadTimeouts bounds Open's initial load, in request timeouts, when its
// context has no deadline.
const loadTimeouts = 12

// stripes is the number of per-twin write locks and cache shards.
const stripes = 64

var (
	// ErrUnavailable means the NATS connection is down.
	ErrUnavailable = errors.New("twin store: NATS is not connected")
	// ErrContended means a write kept losing the compare-and-set race to
	// other nodes until its timeout.
	ErrContended = errors.New("twin store: too many concurrent writes to one twin")
)

// Options configure a Store.
type Options struct {
	// Bucket is the key-value bucket (default "AMQPHUB_twins").
	Bucket string
	// Replicas is the bucket's replication factor, 1..5 (default 1).
	Replicas int
	// Logger receives warnings; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock for $metadata; nil means time.Now.
	Now func() time.Time
	// History is how many revisions the bucket keeps per twin (default
	// 1, at most 64). A watch that lags behind a burst of writes to one
	// twin does not see revisions superseded more than History times (and
	// watches do lag: a push consumer may stall for milliseconds); the
	// node then announces the difference instead of each intermediate
	// patch. More history makes that rarer at History times the storage.
	History int
	// Timeout bounds each request to NATS when the caller's context has
	// no earlier deadline (default 5 s); Open's initial load of every
	// twin follows its context, or 12 timeouts without a deadline.
	Timeout time.Duration
}

// Store is a twins.Store on a JetStream key-value bucket.
//
// Lock order: closeMu (read) → stripe lock → shard lock → subscriber
// callbacks (which must not call back). The watch takes only shard locks.
type Store struct {
	js      jetstream.JetStream
	nc      *nats.Conn
	kv      jetstream.KeyValue
	bucket  string
	log     *slog.Logger
	now     func() time.Time
	timeout time.Duration
	seed    maphash.Seed

	closeMu sync.RWMutex
	closed  bool

	locks  [stripes]sync.Mutex
	shards [stripes]shard

	subjPrefix  string        // of the bucket's keys: "$KV.<bucket>."
	initialLast uint64        // the stream's last sequence when Open started
	loaded      atomic.Bool   // the initial load is over: announce changes
	loadedCh    chan struct{} // closed when loaded is set
	watchRev    atomic.Uint64 // the highest revision the watch delivered
	stopDog     chan struct{} // closed by Close: stops the watchdog
	dogDone     chan struct{}
	watchMu     sync.Mutex
	cc          jetstream.ConsumeContext // the current watch

	subs twins.Subscribers
}

// shard is part of the cache.
type shard struct {
	mu sync.Mutex
	m  map[string]*entry
}

// entry is the latest value a node knows of one key.
type entry struct {
	rev uint64
	val []byte // nil: deleted
	// known says gen and dver are decoded from val (lazily: values loaded
	// at Open are decoded only when a change needs them).
	known bool
	gen   string
	dver  int64
}

var _ twins.Store = (*Store)(nil)

// Open creates the bucket if needed (or updates its replicas), loads every
// twin into the cache and starts watching for other nodes' writes.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		opts.Bucket = DefaultBucket
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Replicas < 1 || opts.Replicas > 5 {
		return nil, fmt.Errorf("open twin bucket: replicas %d out of 1..5", opts.Replicas)
	}
	if opts.History == 0 {
		opts.History = DefaultHistory
	}
	if opts.History < 1 || opts.History > jetstream.KeyValueMaxHistory {
		return nil, fmt.Errorf("open twin bucket: history %d out of 1..%d", opts.History, jetstream.KeyValueMaxHistory)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Store{
		js: js, nc: js.Conn(), bucket: opts.Bucket, log: opts.Logger.With("component", "twins/jetstream"),
		now: opts.Now, timeout: opts.Timeout, seed: maphash.MakeSeed(),
		subjPrefix: "$KV." + opts.Bucket + ".", loadedCh: make(chan struct{}),
		stopDog: make(chan struct{}), dogDone: make(chan struct{}),
	}
	for i := range s.shards {
		s.shards[i].m = map[string]*entry{}
	}
	if !s.nc.IsConnected() {
		return nil, fmt.Errorf("open twin bucket %s: %w", opts.Bucket, ErrUnavailable)
	}

	octx, cancel := s.opCtx(ctx)
	defer cancel()
	kv, err := openBucket(octx, js, opts)
	if err != nil {
		return nil, fmt.Errorf("open twin bucket %s: %w", opts.Bucket, err)
	}
	s.kv = kv

	if err := s.startWatch(ctx, octx); err != nil {
		return nil, err
	}
	return s, nil
}

// openBucket opens the bucket, creating it or updating its replicas and
// history to opts.
func openBucket(ctx context.Context, js jetstream.JetStream, opts Options) (jetstream.KeyValue, error) {
	return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      opts.Bucket,
		Description: "amqphub device and module twins",
		History:     uint8(opts.History),
		Replicas:    opts.Replicas,
		Storage:     jetstream.FileStorage,
	})
}

// startWatch starts following the bucket and returns after the initial
// load of every key (bounded by ctx, or loadTimeouts request timeouts).
func (s *Store) startWatch(ctx, octx context.Context) error {
	// The initial load ends with the newest message now in the stream: it
	// is necessarily the last of its key, so the watch delivers it (or a
	// newer one) after every older key.
	st, err := s.kv.Status(octx)
	if err != nil {
		return fmt.Errorf("twin bucket %s status: %w", s.bucket, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && st.Values() > 0 {
		s.initialLast = bs.StreamInfo().State.LastSeq
	}
	if s.initialLast == 0 {
		s.loaded.Store(true)
		close(s.loadedCh)
	}
	cc, err := s.consume(octx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy})
	if err != nil {
		return fmt.Errorf("watch twin bucket %s: %w", s.bucket, err)
	}
	s.cc = cc
	go s.watchdog()

	lctx, lcancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		lctx, lcancel = context.WithTimeout(ctx, loadTimeouts*s.timeout)
	}
	defer lcancel()
	select {
	case <-s.loadedCh:
		return nil
	case <-lctx.Done():
		s.stopWatching()
		return fmt.Errorf("load twin bucket %s: %w", s.bucket, lctx.Err())
	}
}

// onWatch handles one message of the watch (on the consumer's goroutine,
// in stream order).
func (s *Store) onWatch(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		s.log.Warn("twin bucket watch: a message without metadata", "bucket", s.bucket, "err", err)
		return
	}
	rev := md.Sequence.Stream
	for cur := s.watchRev.Load(); rev > cur && !s.watchRev.CompareAndSwap(cur, rev); cur = s.watchRev.Load() {
	}
	loaded := s.loaded.Load()
	if key, ok := strings.CutPrefix(m.Subject(), s.subjPrefix); ok {
		if id, err := idOf(key); err != nil {
			s.log.Warn("ignoring a foreign key in the twin bucket", "bucket", s.bucket, "err", err)
		} else {
			// Delete and purge markers carry an operation header; markers
			// the server writes (limits) a reason header.
			var val []byte
			if h := m.Headers(); h.Get(kvOperation) == "" && h.Get(jetstream.MarkerReasonHeader) == "" {
				val = m.Data()
			}
			s.observe(key, id, rev, val, nil, loaded)
		}
	}
	if !loaded && rev >= s.initialLast {
		s.loaded.Store(true)
		close(s.loadedCh)
	}
}

// consume starts an ordered consumer of the bucket's keys that calls
// onWatch. Two may run at once while the watchdog replaces one: observe
// ignores what it already saw.
func (s *Store) consume(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.ConsumeContext, error) {
	cfg.FilterSubjects = []string{s.subjPrefix + ">"}
	cons, err := s.js.OrderedConsumer(ctx, streamPrefix+s.bucket, cfg)
	if err != nil {
		return nil, err
	}
	return cons.Consume(s.onWatch,
		jetstream.PullHeartbeat(watchHeartbeat), jetstream.PullExpiry(4*watchHeartbeat),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			s.log.Debug("twin bucket watch", "bucket", s.bucket, "err", err)
		}))
}

// watchdog replaces the watch when the stream holds messages it has not
// delivered for two checks in a row. The ordered consumer recovers by
// itself from most failures, but not always quickly (or at all, seen
// after the NATS server holding it was killed), and a stuck watch means
// stale reads and desired changes never announced.
func (s *Store) watchdog() {
	defer close(s.dogDone)
	t := time.NewTicker(watchCheck)
	defer t.Stop()
	var prevRev uint64
	behind := false
	for {
		select {
		case <-s.stopDog:
			return
		case <-t.C:
		}
		if !s.nc.IsConnected() {
			behind = false
			continue
		}
		rev := s.watchRev.Load()
		last, err := s.streamLast()
		if err != nil {
			s.log.Debug("twin bucket watchdog", "bucket", s.bucket, "err", err)
			continue
		}
		stuck := behind && last > rev && rev == prevRev
		behind, prevRev = last > rev, rev
		if !stuck {
			continue
		}
		s.log.Warn("twin bucket watch is stuck; restarting it", "bucket", s.bucket, "delivered", rev, "stream_last", last)
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		cc, err := s.consume(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: rev + 1,
		})
		cancel()
		if err != nil {
			s.log.Warn("restart twin bucket watch", "bucket", s.bucket, "err", err)
			continue
		}
		s.watchMu.Lock()
		old := s.cc
		s.cc = cc
		s.watchMu.Unlock()
		old.Stop()
		behind = false
	}
}

// streamLast returns the sequence of the stream's newest message.
func (s *Store) streamLast() (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), min(s.timeout, 2*watchCheck))
	defer cancel()
	st, err := s.kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, errors.New("bucket status without stream information")
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// stopWatching stops the watchdog, then the watch.
func (s *Store) stopWatching() jetstream.ConsumeContext {
	close(s.stopDog)
	<-s.dogDone
	s.watchMu.Lock()
	cc := s.cc
	s.watchMu.Unlock()
	cc.Stop()
	return cc
}

// Close stops the watch; later calls fail with twins.ErrClosed. It does
// not close the NATS connection, which belongs to the caller.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	cc := s.stopWatching()
	select {
	case <-cc.Closed():
	case <-time.After(s.timeout):
		return fmt.Errorf("close twin store: the watch of bucket %s did not stop within %v", s.bucket, s.timeout)
	}
	return nil
}

// opCtx bounds a request by the store's timeout.
func (s *Store) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= s.timeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.timeout)
}

func (s *Store) enter(ctx context.Context, id twins.ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := id.Validate(); err != nil {
		return err
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return twins.ErrClosed
	}
	if err := s.usable(); err != nil {
		s.closeMu.RUnlock()
		return fmt.Errorf("twin %s: %w", id, err)
	}
	return nil
}

func (s *Store) leave() { s.closeMu.RUnlock() }

// usable fails when the cache cannot be trusted or nothing can be written.
func (s *Store) usable() error {
	if !s.nc.IsConnected() {
		return fmt.Errorf("%w (connection %s)", ErrUnavailable, s.nc.Status())
	}
	return nil
}

func (s *Store) index(key string) int {
	return int(maphash.String(s.seed, key) % stripes)
}

// cached returns the latest known revision and value of key (nil value:
// absent or deleted).
func (s *Store) cached(key string) (uint64, []byte) {
	sh := &s.shards[s.index(key)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.m[key]; e != nil {
		return e.rev, e.val
	}
	return 0, nil
}

// observe records the value of key at rev (val nil: deleted) if it is newer
// than what the node knew, and announces the desired change it carries.
// local, if set, is the decoded val (a write of this node).
func (s *Store) observe(key string, id twins.ID, rev uint64, val []byte, local *stored, announce bool) {
	sh := &s.shards[s.index(key)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old := sh.m[key]
	if old != nil && rev <= old.rev {
		return
	}
	ne := &entry{rev: rev, val: val}
	if local != nil {
		ne.known, ne.gen, ne.dver = true, local.twin.Generation, local.twin.Desired.Version
	}
	sh.m[key] = ne
	if !announce || val == nil {
		return
	}
	if !s.subs.Any() {
		return
	}
	change, err := s.changeOf(id, old, ne, local)
	if err != nil {
		s.log.Error("cannot announce a desired-property change", "twin", id.String(), "revision", rev, "err", err)
		return
	}
	if change == nil {
		return
	}
	s.subs.Announce(*change)
}

// changeOf returns the desired change from old to ne, or nil. It runs
// under the key's shard lock.
func (s *Store) changeOf(id twins.ID, old, ne *entry, nv *stored) (*twins.DesiredChange, error) {
	if nv == nil {
		d, err := decodeValue(id, ne.val)
		if err != nil {
			return nil, err
		}
		nv = &d
		ne.known, ne.gen, ne.dver = true, d.twin.Generation, d.twin.Desired.Version
	}
	var prev *stored
	prevVer := int64(1) // a twin new in this generation
	if old != nil && old.val != nil {
		if !old.known {
			d, err := decodeValue(id, old.val)
			if err != nil {
				return nil, fmt.Errorf("previous value: %w", err)
			}
			prev = &d
			old.known, old.gen, old.dver = true, d.twin.Generation, d.twin.Desired.Version
		}
		if old.gen == nv.twin.Generation {
			prevVer = old.dver
		} else {
			old = nil
		}
	} else {
		old = nil
	}
	v := nv.twin.Desired.Version
	if v <= prevVer {
		return nil, nil
	}
	change := &twins.DesiredChange{ID: id, Generation: nv.twin.Generation, Version: v}
	if v == prevVer+1 && nv.patchVer == v {
		p, err := nv.decodePatch()
		if err != nil {
			return nil, err
		}
		change.Patch = p
		return change, nil
	}
	// Versions were missed: announce the difference from what was known.
	prevDesired := map[string]any{}
	if old != nil {
		if prev == nil {
			d, err := decodeValue(id, old.val)
			if err != nil {
				return nil, fmt.Errorf("previous value: %w", err)
			}
			prev = &d
		}
		prevDesired = prev.twin.Desired.Values
	}
	change.Patch = twins.Diff(prevDesired, nv.twin.Desired.Values)
	return change, nil
}

// Get implements twins.Store. It reads the node's cache.
func (s *Store) Get(ctx context.Context, id twins.ID, generation string) (twins.Twin, error) {
	if err := s.enter(ctx, id); err != nil {
		return twins.Twin{}, err
	}
	defer s.leave()
	_, val := s.cached(keyOf(id))
	return s.decodeTwin(id, generation, val)
}

// decodeTwin returns the twin a value holds in generation, or a new one.
func (s *Store) decodeTwin(id twins.ID, generation string, val []byte) (twins.Twin, error) {
	d, err := s.decodeStored(id, generation, val)
	return d.twin, err
}

func (s *Store) decodeStored(id twins.ID, generation string, val []byte) (stored, error) {
	if val == nil {
		return stored{twin: twins.NewTwin(id, generation)}, nil
	}
	d, err := decodeValue(id, val)
	if err != nil {
		return stored{}, fmt.Errorf("twin %s: %w", id, err)
	}
	if d.twin.Generation != generation {
		return stored{twin: twins.NewTwin(id, generation)}, nil
	}
	return d, nil
}

// PatchReported implements twins.Store.
func (s *Store) PatchReported(ctx context.Context, id twins.ID, generation string, patch map[string]any) (twins.Twin, error) {
	return s.write(ctx, id, generation, func(t *twins.Twin, now time.Time) (*twins.DesiredChange, error) {
		return nil, twins.ApplyReported(t, patch, now)
	})
}

// Update implements twins.Store.
func (s *Store) Update(ctx context.Context, id twins.ID, generation string, u twins.Update) (twins.Twin, error) {
	return s.write(ctx, id, generation, func(t *twins.Twin, now time.Time) (*twins.DesiredChange, error) {
		return twins.ApplyUpdate(t, u, now)
	})
}

// write runs the compare-and-set loop of one twin under its stripe lock.
func (s *Store) write(ctx context.Context, id twins.ID, generation string, apply func(*twins.Twin, time.Time) (*twins.DesiredChange, error)) (twins.Twin, error) {
	if err := s.enter(ctx, id); err != nil {
		return twins.Twin{}, err
	}
	defer s.leave()
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	key := keyOf(id)
	mu := &s.locks[s.index(key)]
	mu.Lock()
	defer mu.Unlock()
	for attempt := range maxAttempts {
		rev, val := s.cached(key)
		cur, err := s.decodeStored(id, generation, val)
		if err != nil {
			return twins.Twin{}, err
		}
		// A twin of another generation decodes as new, without its patch.
		patchVer, patchJSON := cur.patchVer, cur.patchJSON
		change, err := apply(&cur.twin, s.now().UTC())
		if err != nil {
			return twins.Twin{}, err
		}
		next := stored{twin: cur.twin, patchVer: patchVer, patchJSON: patchJSON}
		if change != nil {
			if next.patchJSON, err = marshalPatch(change.Patch); err != nil {
				return twins.Twin{}, fmt.Errorf("encode desired patch of twin %s: %w", id, err)
			}
			next.patchVer, next.patch, next.patchKnown = change.Version, change.Patch, true
		}
		nval, err := encodeValue(next.twin, next.patchVer, next.patchJSON)
		if err != nil {
			return twins.Twin{}, fmt.Errorf("encode twin %s: %w", id, err)
		}
		var nrev uint64
		if val == nil {
			nrev, err = s.kv.Create(ctx, key, nval)
		} else {
			nrev, err = s.kv.Update(ctx, key, nval, rev)
		}
		if err == nil {
			s.observe(key, id, nrev, nval, &next, true)
			return cur.twin, nil
		}
		if isTransient(err) {
			if err := pause(ctx, attempt); err != nil {
				return twins.Twin{}, fmt.Errorf("write twin %s: %w", id, err)
			}
			continue
		}
		if !jskv.IsConflict(err) {
			return twins.Twin{}, fmt.Errorf("write twin %s: %w", id, err)
		}
		if err := s.refresh(ctx, key, id, rev, attempt); err != nil {
			if ctx.Err() != nil {
				return twins.Twin{}, fmt.Errorf("write twin %s: %w (%d attempts): %w", id, ErrContended, attempt+1, err)
			}
			return twins.Twin{}, err
		}
	}
	return twins.Twin{}, fmt.Errorf("write twin %s: %w (%d attempts)", id, ErrContended, maxAttempts)
}

// refresh reads key from the bucket stream's leader after a lost
// compare-and-set whose expected revision was rev. When the read teaches
// nothing new (the watch or the leader is behind, or no leader answered
// during an election), it waits a little before the next attempt.
func (s *Store) refresh(ctx context.Context, key string, id twins.ID, rev uint64, attempt int) error {
	// A leaderless bucket does not answer: bound the read so that the
	// attempt can be repeated within the operation's time.
	rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	rec, found, err := jskv.GetFromLeader(rctx, s.js.Conn(), s.bucket, key)
	cancel()
	progress := false
	switch {
	case isTransient(err) || (errors.Is(err, jskv.ErrNoLeader) && ctx.Err() == nil):
	case err != nil:
		return fmt.Errorf("re-read twin %s after a concurrent write: %w", id, err)
	case !found || rec.Deleted:
		// Deleted by another node: forget the value so that the next
		// attempt creates the key; the watch's delete marker, older than
		// that write, is then ignored.
		sh := &s.shards[s.index(key)]
		sh.mu.Lock()
		switch old := sh.m[key]; {
		case old != nil && old.rev != rev:
			progress = true // the watch delivered something newer
		case old != nil && old.val != nil:
			sh.m[key] = &entry{rev: old.rev}
			progress = true
		}
		sh.mu.Unlock()
	case rec.Revision > rev:
		s.observe(key, id, rec.Revision, rec.Value, nil, true)
		progress = true
	}
	if progress {
		return nil
	}
	if err := pause(ctx, attempt); err != nil {
		return fmt.Errorf("re-read twin %s after a concurrent write: %w", id, err)
	}
	return nil
}

// refreshTimeout bounds one re-read after a lost compare-and-set.
const refreshTimeout = time.Second

// pause waits before another attempt, longer after more attempts.
func pause(ctx context.Context, attempt int) error {
	t := time.NewTimer(time.Millisecond << min(attempt, 7))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// isTransient reports a request nobody answered: the stream has no leader
// (an election after a NATS node was lost), so nothing was written and
// the request can be sent again.
func isTransient(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// Delete implements twins.Store.
func (s *Store) Delete(ctx context.Context, id twins.ID) error {
	if err := s.enter(ctx, id); err != nil {
		return err
	}
	defer s.leave()
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	return s.deleteKey(ctx, keyOf(id), id)
}

// deleteKey writes a delete marker for key (kv.Delete does not return the
// marker's revision, which the cache needs to order it).
func (s *Store) deleteKey(ctx context.Context, key string, id twins.ID) error {
	mu := &s.locks[s.index(key)]
	mu.Lock()
	defer mu.Unlock()
	for attempt := 0; ; attempt++ {
		m := nats.NewMsg(s.subjPrefix + key)
		m.Header.Set(kvOperation, "DEL")
		ack, err := s.js.PublishMsg(ctx, m)
		if isTransient(err) {
			if err := pause(ctx, attempt); err != nil {
				return fmt.Errorf("delete twin %s: %w", id, err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("delete twin %s: %w", id, err)
		}
		s.observe(key, id, ack.Sequence, nil, nil, false)
		return nil
	}
}

// DeleteDevice implements twins.Store. It deletes the device's key and
// every module key that the bucket or the cache knows of.
func (s *Store) DeleteDevice(ctx context.Context, deviceID string) error {
	dev := twins.ID{DeviceID: deviceID}
	if err := s.enter(ctx, dev); err != nil {
		return err
	}
	defer s.leave()
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	keys := map[string]bool{keyOf(dev): true}
	modPrefix := keyOf(dev) + "."
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for k, e := range sh.m {
			if e.val != nil && strings.HasPrefix(k, modPrefix) {
				keys[k] = true
			}
		}
		sh.mu.Unlock()
	}
	lister, err := s.kv.ListKeysFiltered(ctx, deviceFilter(deviceID))
	if err != nil {
		return fmt.Errorf("list module twins of device %s: %w", deviceID, err)
	}
	for k := range lister.Keys() {
		keys[k] = true
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list module twins of device %s: %w", deviceID, err)
	}
	for k := range keys {
		id, err := idOf(k)
		if err != nil {
			return err
		}
		if err := s.deleteKey(ctx, k, id); err != nil {
			return err
		}
	}
	return nil
}

// SubscribeDesired implements twins.Store. fn runs on the goroutine of
// the write (local writes) or of the bucket watch (other nodes' writes).
func (s *Store) SubscribeDesired(fn func(twins.DesiredChange)) (cancel func()) {
	return s.subs.Add(fn)
}
