package twins

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/pebbleutil"
)

// PebbleOptions configures a PebbleStore.
type PebbleOptions struct {
	// InMemory keeps the database in memory (pebble's vfs.NewMem); the
	// directory is then only a name.
	InMemory bool
	// FS overrides the file system (tests that reopen an in-memory store);
	// it takes precedence over InMemory.
	FS vfs.FS
	// NoSync skips the fsync of each write (benchmarks): a process crash
	// loses nothing, an OS crash may lose the last writes.
	NoSync bool
	// Now is the clock for $metadata; nil means time.Now.
	Now func() time.Time
	// Logger receives pebble's log lines; nil means slog.Default().
	Logger *slog.Logger
	// DiskGuard sets the free space below which writes are refused with
	// pebbleutil.ErrNoSpace (default pebbleutil.DefaultReserve). The guard
	// is off for in-memory stores (InMemory or FS) unless a StatFS is
	// injected.
	DiskGuard pebbleutil.GuardOptions
}

// lockStripes is the number of per-twin write locks. Writes to twins in
// different stripes run in parallel, and pebble's commit pipeline lets
// their WAL fsyncs share one disk flush.
const lockStripes = 64

// keyPrefix starts every key; a twin's key is prefix + deviceID + NUL +
// moduleID, so a device's twin and its modules' twins are one key range.
const keyPrefix = "tw/"

// recordVersion is the first byte of every stored value, so the encoding
// can change later.
const recordVersion byte = 1

// PebbleStore is the embedded Store on a Pebble database of its own.
//
// Lock order: closeMu (read) → stripe lock → subscriber callbacks (which
// must not call back). Reads take only closeMu.
type PebbleStore struct {
	db       *pebble.DB
	log      *slog.Logger
	now      func() time.Time
	writeOpt *pebble.WriteOptions
	guard    *pebbleutil.Guard // nil: writes are not guarded
	closeMu  sync.RWMutex
	closed   bool
	stripes  [lockStripes]sync.Mutex
	seed     maphash.Seed

	subs Subscribers
}

var _ Store = (*PebbleStore)(nil)

// OpenPebble opens (creating if needed) a twin database in dir.
func OpenPebble(dir string, opts PebbleOptions) (*PebbleStore, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	po := &pebble.Options{Logger: pebbleutil.NewLogger(log, "twins")}
	switch {
	case opts.FS != nil:
		po.FS = opts.FS
	case opts.InMemory:
		po.FS = vfs.NewMem()
	}
	if dir == "" && po.FS == nil {
		return nil, errors.New("open twin store: a directory is required unless InMemory is set")
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("open twin database %q: %w", dir, err)
	}
	s := &PebbleStore{db: db, log: log, now: opts.Now, writeOpt: pebble.Sync, seed: maphash.MakeSeed(),
		guard: pebbleutil.NewGuard(dir, po.FS != nil, opts.DiskGuard, log, "twins")}
	if opts.NoSync {
		s.writeOpt = pebble.NoSync
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Close closes the database.
func (s *PebbleStore) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close twin database: %w", err)
	}
	return nil
}

func (s *PebbleStore) enter(ctx context.Context, id ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := id.Validate(); err != nil {
		return err
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *PebbleStore) leave() { s.closeMu.RUnlock() }

func (s *PebbleStore) stripe(id ID) *sync.Mutex {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(id.DeviceID)
	h.WriteByte(0)
	h.WriteString(id.ModuleID)
	return &s.stripes[h.Sum64()%lockStripes]
}

func twinKey(id ID) []byte {
	k := make([]byte, 0, len(keyPrefix)+len(id.DeviceID)+1+len(id.ModuleID))
	k = append(k, keyPrefix...)
	k = append(k, id.DeviceID...)
	k = append(k, 0)
	return append(k, id.ModuleID...)
}

// load returns the stored twin of id in generation, or a new one.
func (s *PebbleStore) load(id ID, generation string) (Twin, error) {
	v, closer, err := s.db.Get(twinKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return NewTwin(id, generation), nil
	}
	if err != nil {
		return Twin{}, fmt.Errorf("read twin %s: %w", id, err)
	}
	defer closer.Close()
	t, err := decodeRecord(id, v)
	if err != nil {
		return Twin{}, fmt.Errorf("twin %s: %w", id, err)
	}
	if t.Generation != generation {
		return NewTwin(id, generation), nil
	}
	return t, nil
}

// Get implements Store.
func (s *PebbleStore) Get(ctx context.Context, id ID, generation string) (Twin, error) {
	if err := s.enter(ctx, id); err != nil {
		return Twin{}, err
	}
	defer s.leave()
	return s.load(id, generation)
}

// PatchReported implements Store.
func (s *PebbleStore) PatchReported(ctx context.Context, id ID, generation string, patch map[string]any) (Twin, error) {
	return s.write(ctx, id, generation, func(t *Twin, now time.Time) (*DesiredChange, error) {
		return nil, applyReported(t, patch, now)
	})
}

// Update implements Store.
func (s *PebbleStore) Update(ctx context.Context, id ID, generation string, u Update) (Twin, error) {
	return s.write(ctx, id, generation, func(t *Twin, now time.Time) (*DesiredChange, error) {
		return applyUpdate(t, u, now)
	})
}

// write runs a read-modify-write of one twin under its stripe lock, makes
// it durable, then announces a desired change before unlocking, so that
// announcements of one twin keep their commit order.
func (s *PebbleStore) write(ctx context.Context, id ID, generation string, apply func(*Twin, time.Time) (*DesiredChange, error)) (Twin, error) {
	if err := s.enter(ctx, id); err != nil {
		return Twin{}, err
	}
	defer s.leave()
	mu := s.stripe(id)
	mu.Lock()
	defer mu.Unlock()
	t, err := s.load(id, generation)
	if err != nil {
		return Twin{}, err
	}
	change, err := apply(&t, s.now().UTC())
	if err != nil {
		return Twin{}, err
	}
	rec, err := encodeRecord(t)
	if err != nil {
		return Twin{}, fmt.Errorf("encode twin %s: %w", id, err)
	}
	// Checked after apply, so that an invalid patch or a stale etag is
	// reported as such even while the disk is full.
	if err := s.guard.Check(); err != nil {
		return Twin{}, fmt.Errorf("write twin %s: %w", id, err)
	}
	if err := s.db.Set(twinKey(id), rec, s.writeOpt); err != nil {
		return Twin{}, fmt.Errorf("write twin %s: %w", id, err)
	}
	if change != nil {
		s.subs.Announce(*change)
	}
	return t, nil
}

// Delete implements Store.
func (s *PebbleStore) Delete(ctx context.Context, id ID) error {
	if err := s.enter(ctx, id); err != nil {
		return err
	}
	defer s.leave()
	mu := s.stripe(id)
	mu.Lock()
	defer mu.Unlock()
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("delete twin %s: %w", id, err)
	}
	if err := s.db.Delete(twinKey(id), s.writeOpt); err != nil {
		return fmt.Errorf("delete twin %s: %w", id, err)
	}
	return nil
}

// DeleteDevice implements Store.
func (s *PebbleStore) DeleteDevice(ctx context.Context, deviceID string) error {
	id := ID{DeviceID: deviceID}
	if err := s.enter(ctx, id); err != nil {
		return err
	}
	defer s.leave()
	start := twinKey(id)
	end := append(bytes.Clone(start[:len(start)-1]), 1)
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("delete twins of device %s: %w", deviceID, err)
	}
	if err := s.db.DeleteRange(start, end, s.writeOpt); err != nil {
		return fmt.Errorf("delete twins of device %s: %w", deviceID, err)
	}
	return nil
}

// SubscribeDesired implements Store.
func (s *PebbleStore) SubscribeDesired(fn func(DesiredChange)) (cancel func()) {
	return s.subs.Add(fn)
}

// record is the stored form of a twin.
type record struct {
	Generation string         `json:"g"`
	Version    int64          `json:"v"`
	Tags       map[string]any `json:"t"`
	Desired    sectionRecord  `json:"d"`
	Reported   sectionRecord  `json:"r"`
}

type sectionRecord struct {
	Version int64          `json:"v"`
	Values  map[string]any `json:"p"`
	Meta    *metaRecord    `json:"m"`
}

type metaRecord struct {
	Updated  time.Time              `json:"u"`
	Version  int64                  `json:"v,omitempty"`
	Children map[string]*metaRecord `json:"c,omitempty"`
}

func toMetaRecord(m *Metadata) *metaRecord {
	if m == nil {
		return nil
	}
	r := &metaRecord{Updated: m.LastUpdated, Version: m.LastUpdatedVersion}
	if len(m.Children) > 0 {
		r.Children = make(map[string]*metaRecord, len(m.Children))
		for k, c := range m.Children {
			r.Children[k] = toMetaRecord(c)
		}
	}
	return r
}

func fromMetaRecord(r *metaRecord) *Metadata {
	if r == nil {
		return &Metadata{}
	}
	m := &Metadata{LastUpdated: r.Updated, LastUpdatedVersion: r.Version}
	if len(r.Children) > 0 {
		m.Children = make(map[string]*Metadata, len(r.Children))
		for k, c := range r.Children {
			m.Children[k] = fromMetaRecord(c)
		}
	}
	return m
}

func encodeRecord(t Twin) ([]byte, error) {
	r := record{
		Generation: t.Generation,
		Version:    t.Version,
		Tags:       t.Tags,
		Desired:    sectionRecord{Version: t.Desired.Version, Values: t.Desired.Values, Meta: toMetaRecord(t.Desired.Metadata)},
		Reported:   sectionRecord{Version: t.Reported.Version, Values: t.Reported.Values, Meta: toMetaRecord(t.Reported.Metadata)},
	}
	var buf bytes.Buffer
	buf.WriteByte(recordVersion)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&r); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func decodeRecord(id ID, b []byte) (Twin, error) {
	if len(b) == 0 || b[0] != recordVersion {
		return Twin{}, fmt.Errorf("stored record has unknown format version")
	}
	dec := json.NewDecoder(bytes.NewReader(b[1:]))
	dec.UseNumber()
	var r record
	if err := dec.Decode(&r); err != nil {
		return Twin{}, fmt.Errorf("decode stored record: %w", err)
	}
	orEmpty := func(m map[string]any) map[string]any {
		if m == nil {
			return map[string]any{}
		}
		return m
	}
	return Twin{
		ID:         id,
		Generation: r.Generation,
		Version:    r.Version,
		ETag:       ETagFor(r.Generation, r.Version),
		Tags:       orEmpty(r.Tags),
		Desired:    Properties{Version: r.Desired.Version, Values: orEmpty(r.Desired.Values), Metadata: fromMetaRecord(r.Desired.Meta)},
		Reported:   Properties{Version: r.Reported.Version, Values: orEmpty(r.Reported.Values), Metadata: fromMetaRecord(r.Reported.Meta)},
	}, nil
}
