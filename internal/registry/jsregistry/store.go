// Package jsregistry is a registry.Store on a NATS JetStream key-value
// bucket, for amqphub nodes that share one registry in cluster mode.
//
// Layout: one bucket; a device is key d.<tok(deviceId)>, a module is key
// m.<tok(deviceId)>.<tok(moduleId)>, tok being hub.SubjectToken (unpadded
// base64url, since ids may hold characters keys forbid); values are the
// JSON of registry.Device and registry.Module.
//
// Reads never leave the node: every Store keeps the whole bucket in memory,
// fed by a watch started in Open, which returns once the initial state is
// loaded. Another node's write is seen when the watch delivers it (a few
// milliseconds); a write made through this Store is seen by its own reads
// as soon as the call returns. While NATS is unreachable, reads keep
// answering from memory and writes fail with registry.ErrUnavailable.
//
// Writes are compare-and-set on the key's revision, so writers on several
// nodes never lose an update: on a conflict the writer re-reads the key,
// checks the If-Match etag again against the fresh value and retries.
//
// Deleting a device deletes its key first and then its module keys, which
// are several writes. If the node dies in between, the remaining module
// keys are orphans: reads ignore modules whose device is missing, and
// they are swept by the next CreateDevice or DeleteDevice of that id on
// any node. CreateModule checks again after writing that the device still
// exists, and removes its module otherwise, so a module created while
// another node deletes the device does not survive either.
package jsregistry

import (
	"context"
	"encoding/base64"
	"encoding/json"
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

	"amqphub/internal/hub"
	"amqphub/internal/jskv"
	"amqphub/internal/registry"
)

// Defaults for Options fields left at zero.
const (
	DefaultBucket      = "AMQPHUB_registry"
	DefaultTimeout     = 5 * time.Second
	DefaultLoadTimeout = 30 * time.Second
)

// Options configure a Store. Every zero field selects a default.
type Options struct {
	// Bucket is the key-value bucket's name (default "AMQPHUB_registry",
	// hub.Cluster.Bucket("registry") in the server). It is created if
	// missing.
	Bucket string
	// Replicas is the bucket's replication factor, 1..5 (default 1; 3 in
	// a production cluster).
	Replicas int
	// Storage is where the bucket keeps its data (default file storage).
	Storage jetstream.StorageType
	// Timeout bounds each write call's requests to NATS (default 5 s), so
	// that a write fails instead of hanging while NATS is unreachable.
	Timeout time.Duration
	// LoadTimeout bounds how long Open waits for the initial state
	// (default 30 s), on top of Open's context.
	LoadTimeout time.Duration
	// Logger receives warnings about undecodable keys and unfinished
	// cascades; nil means slog.Default().
	Logger *slog.Logger
}

const lockStripes = 64

// Store is a registry.Store on a JetStream key-value bucket. It is safe for
// concurrent use.
type Store struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	subjPre string // "$KV.<bucket>."
	opts    Options
	log     *slog.Logger
	cache   *cache

	closed atomic.Bool
	ctx    context.Context // ends at Close
	stop   context.CancelFunc
	done   chan struct{} // closed when the watch goroutine ends

	stripes [lockStripes]stripe
	seed    maphash.Seed

	lmu       sync.Mutex
	listeners map[uint64]func(deviceID, moduleID string)
	nextL     uint64
}

var _ registry.Store = (*Store)(nil)

// Open creates the bucket or updates its replicas, starts the watch and
// returns once the Store holds the bucket's current state.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		opts.Bucket = DefaultBucket
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.Replicas < 1 || opts.Replicas > 5 {
		return nil, fmt.Errorf("open registry bucket: %w: replicas %d, must be 1..5", registry.ErrInvalidArgument, opts.Replicas)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.LoadTimeout <= 0 {
		opts.LoadTimeout = DefaultLoadTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "registry/jetstream", "bucket", opts.Bucket)

	cctx, cancel := context.WithTimeout(ctx, opts.LoadTimeout)
	defer cancel()
	kv, err := openBucket(cctx, js, opts)
	if err != nil {
		return nil, fmt.Errorf("open registry bucket %q: %w: %w", opts.Bucket, registry.ErrUnavailable, err)
	}
	s := &Store{
		js:        js,
		kv:        kv,
		subjPre:   "$KV." + opts.Bucket + ".",
		opts:      opts,
		log:       log,
		cache:     newCache(),
		done:      make(chan struct{}),
		seed:      maphash.MakeSeed(),
		listeners: make(map[uint64]func(string, string)),
	}
	// The watch lives until Close, not until Open's context ends.
	s.ctx, s.stop = context.WithCancel(context.Background())
	w, err := kv.WatchAll(s.ctx)
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("watch registry bucket %q: %w: %w", opts.Bucket, registry.ErrUnavailable, err)
	}
	ready := make(chan struct{})
	go s.watch(w, ready)
	select {
	case <-ready:
		return s, nil
	case <-cctx.Done():
		err = cctx.Err()
	}
	_ = s.Close()
	return nil, fmt.Errorf("load registry bucket %q: %w: %w", opts.Bucket, registry.ErrUnavailable, err)
}

// openBucket opens the bucket, creating it or updating its configuration
// to opts (as every cluster store does: a node's replicas apply).
func openBucket(ctx context.Context, js jetstream.JetStream, opts Options) (jetstream.KeyValue, error) {
	return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      opts.Bucket,
		Description: "amqphub device registry",
		History:     1,
		Replicas:    opts.Replicas,
		Storage:     opts.Storage,
	})
}

// rewatchDelay is the pause before a failed watch is started again.
const rewatchDelay = 500 * time.Millisecond

// watch applies the watch's updates to the cache until Close.
//
// The watch is an ordered consumer that lives on one server; when that
// server dies or restarts, the consumer is gone, and the client library
// notices only after two missed idle heartbeats (10 s). So after every
// reconnect a second watch is started that resumes after the last revision
// applied, while the first one goes on delivering in case its consumer is
// alive; once the new watch exists it replaces the old one. Updates the
// cache already has are dropped by revision, so the overlap is harmless.
func (s *Store) watch(w jetstream.KeyWatcher, ready chan struct{}) {
	defer close(s.done)
	var reconnected chan nats.Status
	if nc := s.js.Conn(); nc != nil {
		reconnected = nc.StatusChanged(nats.CONNECTED)
		defer nc.RemoveStatusListener(reconnected)
	}
	type attempt struct {
		w   jetstream.KeyWatcher
		err error
	}
	updates := w.Updates()
	var (
		starting chan attempt // the running attempt to start a watch, or nil
		again    bool         // start another attempt when this one ends
		retry    <-chan time.Time
	)
	rewatch := func() {
		retry = nil
		if starting != nil {
			again = true
			return
		}
		from := s.cache.lastRevision() + 1
		ch := make(chan attempt, 1)
		go func() {
			nw, err := s.kv.WatchAll(s.ctx, jetstream.ResumeFromRevision(from))
			ch <- attempt{nw, err}
		}()
		starting = ch
	}
	loading := true
	for {
		select {
		case <-s.ctx.Done():
			if w != nil {
				s.stopWatcher(w)
			}
			if starting != nil {
				go func(ch chan attempt) {
					if a := <-ch; a.err == nil {
						s.stopWatcher(a.w)
					}
				}(starting)
			}
			return
		case <-reconnected:
			rewatch()
		case <-retry:
			rewatch()
		case a := <-starting:
			starting = nil
			switch {
			case a.err != nil:
				if s.ctx.Err() == nil {
					s.log.Warn("registry: cannot restart the bucket watch, retrying", "err", a.err)
					retry = time.After(rewatchDelay)
				}
			case s.ctx.Err() != nil:
				s.stopWatcher(a.w)
			default:
				if w != nil {
					s.stopWatcher(w)
				}
				w, updates = a.w, a.w.Updates()
			}
			if again {
				again = false
				rewatch()
			}
		case e, ok := <-updates:
			if !ok {
				// The subscription ended without Close (the connection
				// closed, or the server removed the consumer).
				w, updates = nil, nil
				if starting == nil && retry == nil {
					retry = time.After(rewatchDelay)
				}
				continue
			}
			if e == nil {
				if loading {
					loading = false
					s.cache.loaded()
					close(ready)
				}
				continue
			}
			ch, err := parseEntry(e)
			if err != nil {
				s.log.Warn("registry: ignoring bucket entry", "key", e.Key(), "revision", e.Revision(), "err", err)
				s.cache.skip(e.Revision())
				continue
			}
			if s.cache.applyWatch(ch) && !loading {
				s.notify(ch.deviceID, ch.moduleID)
			}
		}
	}
}

// stopWatcher ends a watch without waiting for it. Stop unsubscribes at
// once but then asks the server to delete the watch's consumer, which can
// take the request timeout while the cluster elects a leader or the
// connection is down (the server drops an idle ordered consumer by
// itself). The updates channel is drained until it closes, because the
// library's delivery goroutine blocks on a full channel and would never
// finish otherwise.
func (s *Store) stopWatcher(w jetstream.KeyWatcher) {
	go func() {
		for range w.Updates() {
		}
	}()
	go func() {
		if err := w.Stop(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			s.log.Debug("registry: stopping the bucket watch", "err", err)
		}
	}()
}

// Close stops the watch. Later calls fail with registry.ErrClosed. The
// NATS connection belongs to the caller and stays open.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.stop()
	select {
	case <-s.done:
	case <-time.After(s.opts.Timeout):
		s.log.Warn("registry: watch did not stop in time")
	}
	return nil
}

// OnChange registers fn to be called with the ids of every device
// (moduleID "") or module that changes, whether the change was made
// through this Store or arrived from another node through the watch. It
// is called once per change per Store, after the new state is readable,
// with no lock held, so fn may call the Store (but not Close); calls may
// come from several goroutines at once. A slow fn delays this Store's view
// of other nodes' writes. cancel unregisters fn.
func (s *Store) OnChange(fn func(deviceID, moduleID string)) (cancel func()) {
	s.lmu.Lock()
	id := s.nextL
	s.nextL++
	s.listeners[id] = fn
	s.lmu.Unlock()
	return func() {
		s.lmu.Lock()
		delete(s.listeners, id)
		s.lmu.Unlock()
	}
}

func (s *Store) notify(deviceID, moduleID string) {
	s.lmu.Lock()
	fns := make([]func(string, string), 0, len(s.listeners))
	for _, fn := range s.listeners {
		fns = append(fns, fn)
	}
	s.lmu.Unlock()
	for _, fn := range fns {
		fn(deviceID, moduleID)
	}
}

// applyLocal puts a state this Store wrote or read into the cache. If it
// was news, it is announced when the device's stripe lock, which every
// caller holds, is released, so that a listener may write to the same
// device.
func (s *Store) applyLocal(ch change) {
	if s.cache.applyLocal(ch) {
		st := s.stripe(ch.deviceID)
		st.notes = append(st.notes, ch)
	}
}

func deviceKey(id string) string { return "d." + hub.SubjectToken(id) }

// modulePrefix is the start of every module key of deviceID.
func modulePrefix(deviceID string) string { return "m." + hub.SubjectToken(deviceID) + "." }

func moduleKey(deviceID, moduleID string) string {
	return modulePrefix(deviceID) + hub.SubjectToken(moduleID)
}

func decodeToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("bad id token %q: %w", tok, err)
	}
	return string(b), nil
}

// parseKey returns the ids a key names.
func parseKey(key string) (deviceID, moduleID string, err error) {
	parts := strings.Split(key, ".")
	switch {
	case len(parts) == 2 && parts[0] == "d":
		deviceID, err = decodeToken(parts[1])
		return deviceID, "", err
	case len(parts) == 3 && parts[0] == "m":
		if deviceID, err = decodeToken(parts[1]); err != nil {
			return "", "", err
		}
		if moduleID, err = decodeToken(parts[2]); err != nil {
			return "", "", err
		}
		if moduleID == "" {
			return "", "", errors.New("empty module id")
		}
		return deviceID, moduleID, nil
	}
	return "", "", errors.New("not a registry key")
}

func parseEntry(e jetstream.KeyValueEntry) (change, error) {
	return parseRecord(e.Key(), e.Revision(), e.Value(), e.Operation() != jetstream.KeyValuePut)
}

func parseRecord(key string, rev uint64, val []byte, deleted bool) (change, error) {
	dev, mod, err := parseKey(key)
	if err != nil {
		return change{}, err
	}
	ch := change{key: key, rev: rev, deviceID: dev, moduleID: mod}
	if deleted {
		ch.deleted = true
		return ch, nil
	}
	if mod == "" {
		err = json.Unmarshal(val, &ch.dev)
		if err == nil && ch.dev.DeviceID != dev {
			err = fmt.Errorf("value names device %q", ch.dev.DeviceID)
		}
	} else {
		err = json.Unmarshal(val, &ch.mod)
		if err == nil && (ch.mod.DeviceID != dev || ch.mod.ModuleID != mod) {
			err = fmt.Errorf("value names module %q of device %q", ch.mod.ModuleID, ch.mod.DeviceID)
		}
	}
	if err != nil {
		return change{}, fmt.Errorf("decode value: %w", err)
	}
	return ch, nil
}

// stripe is a write lock shared by a set of devices, with the changes made
// under it that are still to be announced.
type stripe struct {
	mu    sync.Mutex
	notes []change
}

func (s *Store) stripe(deviceID string) *stripe {
	return &s.stripes[maphash.String(s.seed, deviceID)%lockStripes]
}

// lock serialises this node's writes to a device (the bucket's
// compare-and-set serialises them across nodes; this saves retries). The
// returned function unlocks and then announces the changes made.
func (s *Store) lock(deviceID string) func() {
	st := s.stripe(deviceID)
	st.mu.Lock()
	return func() {
		notes := st.notes
		st.notes = nil
		st.mu.Unlock()
		for _, ch := range notes {
			s.notify(ch.deviceID, ch.moduleID)
		}
	}
}

// begin starts a write: it fails at once when the Store is closed or the
// connection is down (so that a write never waits for a reconnect) and
// bounds the call with the write timeout.
func (s *Store) begin(ctx context.Context, op string) (context.Context, context.CancelFunc, error) {
	if s.closed.Load() {
		return nil, nil, registry.ErrClosed
	}
	if nc := s.js.Conn(); nc != nil && !nc.IsConnected() {
		return nil, nil, fmt.Errorf("%s: %w: not connected to NATS (%v)", op, registry.ErrUnavailable, nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	return ctx, cancel, nil
}

func unavailable(op string, err error) error {
	return fmt.Errorf("%s: %w: %w", op, registry.ErrUnavailable, err)
}

// fetch reads a key from the bucket stream's leader, bypassing the cache
// (and the replicas, which may lag), and puts what it found into the
// cache. A missing key is reported as ok false.
func (s *Store) fetch(ctx context.Context, key string) (change, bool, error) {
	rec, found, err := jskv.GetFromLeader(ctx, s.js.Conn(), s.kv.Bucket(), key)
	if err != nil {
		return change{}, false, err
	}
	if !found {
		return change{}, false, nil
	}
	ch, err := parseRecord(key, rec.Revision, rec.Value, rec.Deleted)
	if err != nil {
		return change{}, false, fmt.Errorf("key %q: %w", key, err)
	}
	s.applyLocal(ch) // a delete marker too: the cache learns of it
	if ch.deleted {
		return change{}, false, nil
	}
	return ch, true, nil
}

// deleteKey writes a delete marker for key, if rev is not 0 only when rev
// is still the key's revision, and returns the marker's revision. It
// publishes the marker itself, as the key-value API does, because
// KeyValue.Delete does not return the revision read-your-writes needs.
func (s *Store) deleteKey(ctx context.Context, key string, rev uint64) (uint64, error) {
	m := nats.NewMsg(s.subjPre + key)
	m.Header.Set("KV-Operation", "DEL")
	var opts []jetstream.PublishOpt
	if rev != 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(rev))
	}
	ack, err := s.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// maxAttempts bounds compare-and-set retries; each retry means another
// writer won in between, so reaching it needs a pathological write rate on
// one identity.
const maxAttempts = 32

var errTooManyConflicts = errors.New("too many concurrent writers")
