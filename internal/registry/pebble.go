package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble"
	"github.com/cockroachdb/pebble/vfs"

	"amqphub/internal/pebbleutil"
)

// PebbleOptions configures a PebbleStore.
type PebbleOptions struct {
	// InMemory keeps the database in memory (pebble's vfs.NewMem); the dir
	// argument of OpenPebble is then ignored. Tests and `--in-memory` use
	// it so that they exercise exactly the on-disk code.
	InMemory bool
	// CacheEntries bounds the read cache (devices plus modules); 0 means
	// DefaultCacheEntries, a negative value disables the cache.
	CacheEntries int
	// Logger receives pebble's log lines; nil means slog.Default().
	Logger *slog.Logger
	// DiskGuard sets the free space below which writes are refused with
	// pebbleutil.ErrNoSpace (default pebbleutil.DefaultReserve). The guard
	// is off for in-memory stores unless a StatFS is injected.
	DiskGuard pebbleutil.GuardOptions
}

// DefaultCacheEntries is the default read-cache size, enough to keep a
// hundred thousand devices' records (~1 KiB each) hot.
const DefaultCacheEntries = 100_000

// DefaultKeyPrefix is the key prefix OpenPebble uses.
const DefaultKeyPrefix = "reg/"

// recordVersion is the first byte of every stored value so the encoding can
// change later without guessing.
const recordVersion byte = 1

// lockStripes is the number of per-device write locks; writes to devices in
// different stripes proceed in parallel and share pebble's WAL fsync.
const lockStripes = 64

// PebbleStore is a Store on a Pebble database, with an in-memory read cache.
//
// Lock order: closeMu (read) → stripe lock → cache.mu. No lock is held
// across a pebble call except closeMu (read) and the stripe lock.
type PebbleStore struct {
	db      *pebble.DB
	ownsDB  bool
	prefix  string
	closeMu sync.RWMutex // held for reading around every pebble call; Close takes it for writing
	closed  atomic.Bool
	stripes [lockStripes]sync.Mutex
	seed    maphash.Seed
	cache   *cache
	lastGen atomic.Int64
	guard   *pebbleutil.Guard // nil: writes are not guarded
}

var _ Store = (*PebbleStore)(nil)

// OpenPebble opens (creating if needed) a registry database in dir, or an
// in-memory one when opts.InMemory is set. The store owns the database and
// closes it in Close.
func OpenPebble(dir string, opts PebbleOptions) (*PebbleStore, error) {
	log := loggerOr(opts.Logger)
	po := &pebble.Options{Logger: pebbleutil.NewLogger(log, "registry")}
	if opts.InMemory {
		po.FS = vfs.NewMem()
		dir = ""
	} else if dir == "" {
		return nil, fmt.Errorf("open registry: %w: a directory is required unless InMemory is set", ErrInvalidArgument)
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("open registry database %q: %w", dir, err)
	}
	s := NewPebbleStore(db, DefaultKeyPrefix, opts)
	s.ownsDB = true
	s.guard = pebbleutil.NewGuard(dir, opts.InMemory, opts.DiskGuard, log, "registry")
	return s, nil
}

// NewPebbleStore returns a store that keeps its keys under prefix in an
// existing database shared with other components. Close does not close db.
// Its writes are not guarded against a full disk (opts.DiskGuard is
// ignored): the database's owner knows its directory and guards it.
func NewPebbleStore(db *pebble.DB, prefix string, opts PebbleOptions) *PebbleStore {
	n := opts.CacheEntries
	if n == 0 {
		n = DefaultCacheEntries
	}
	return &PebbleStore{
		db:     db,
		prefix: prefix,
		seed:   maphash.MakeSeed(),
		cache:  newCache(n),
	}
}

func loggerOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// Close closes the store, and the database if the store opened it.
func (s *PebbleStore) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	if s.ownsDB {
		if err := s.db.Close(); err != nil {
			return fmt.Errorf("close registry database: %w", err)
		}
	}
	return nil
}

// enter guards a pebble call against a concurrent Close.
func (s *PebbleStore) enter() error {
	s.closeMu.RLock()
	if s.closed.Load() {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *PebbleStore) leave() { s.closeMu.RUnlock() }

func (s *PebbleStore) stripe(deviceID string) *sync.Mutex {
	return &s.stripes[maphash.String(s.seed, deviceID)%lockStripes]
}

func (s *PebbleStore) deviceKey(id string) []byte {
	return []byte(s.prefix + "d/" + id)
}

// moduleKey uses '/' as the separator, which ids cannot contain, so
// modulePrefix(d) selects exactly device d's modules.
func (s *PebbleStore) moduleKey(deviceID, moduleID string) []byte {
	return []byte(s.prefix + "m/" + deviceID + "/" + moduleID)
}

func (s *PebbleStore) modulePrefix(deviceID string) []byte {
	return []byte(s.prefix + "m/" + deviceID + "/")
}

// prefixEnd returns the smallest key greater than every key with prefix p
// (p never ends in 0xff here because ids are ASCII).
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	end[len(end)-1]++
	return end
}

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append([]byte{recordVersion}, b...), nil
}

func decode(b []byte, v any) error {
	if len(b) == 0 || b[0] != recordVersion {
		return fmt.Errorf("unknown record version")
	}
	return json.Unmarshal(b[1:], v)
}

// newGenerationID returns a decimal id in the style of IoT Hub's (.NET
// ticks), strictly increasing within this process so a re-created device
// never gets its predecessor's generation.
func (s *PebbleStore) newGenerationID(now time.Time) string {
	const unixEpochTicks = 621355968000000000
	t := now.UnixNano()/100 + unixEpochTicks
	for {
		last := s.lastGen.Load()
		if t <= last {
			t = last + 1
		}
		if s.lastGen.CompareAndSwap(last, t) {
			return strconv.FormatInt(t, 10)
		}
	}
}

// newETag returns an opaque etag in IoT Hub's style: base64 of digits.
func newETag() (string, error) {
	k, err := NewKey()
	if err != nil {
		return "", err
	}
	raw, _ := base64.StdEncoding.DecodeString(k)
	var n uint64
	for _, b := range raw[:8] {
		n = n<<8 | uint64(b)
	}
	return base64.StdEncoding.EncodeToString([]byte(strconv.FormatUint(n%1e12, 10))), nil
}

// loadDevice reads a device, cache first. The caller has entered.
func (s *PebbleStore) loadDevice(id string) (Device, error) {
	if d, ok := s.cache.device(id); ok {
		return d.clone(), nil
	}
	epoch := s.cache.epochNow()
	val, closer, err := s.db.Get(s.deviceKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return Device{}, fmt.Errorf("device %q: %w", id, ErrDeviceNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("read device %q: %w", id, err)
	}
	var d Device
	err = decode(val, &d)
	closer.Close()
	if err != nil {
		return Device{}, fmt.Errorf("decode device %q: %w", id, err)
	}
	s.cache.fillDevice(epoch, d.clone())
	return d, nil
}

func (s *PebbleStore) loadModule(deviceID, moduleID string) (Module, error) {
	if m, ok := s.cache.module(deviceID, moduleID); ok {
		return m, nil
	}
	epoch := s.cache.epochNow()
	val, closer, err := s.db.Get(s.moduleKey(deviceID, moduleID))
	if errors.Is(err, pebble.ErrNotFound) {
		return Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrModuleNotFound)
	}
	if err != nil {
		return Module{}, fmt.Errorf("read module %q on device %q: %w", moduleID, deviceID, err)
	}
	var m Module
	err = decode(val, &m)
	closer.Close()
	if err != nil {
		return Module{}, fmt.Errorf("decode module %q on device %q: %w", moduleID, deviceID, err)
	}
	s.cache.fillModule(epoch, m)
	return m, nil
}

func (s *PebbleStore) putDevice(d Device) error {
	val, err := encode(d)
	if err != nil {
		return fmt.Errorf("encode device %q: %w", d.DeviceID, err)
	}
	// Checked just before the write, so that a full disk does not hide
	// the outcome a request would otherwise have (404, 409, 412).
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("write device %q: %w", d.DeviceID, err)
	}
	if err := s.db.Set(s.deviceKey(d.DeviceID), val, pebble.Sync); err != nil {
		return fmt.Errorf("write device %q: %w", d.DeviceID, err)
	}
	s.cache.setDevice(d.clone())
	return nil
}

func (s *PebbleStore) putModule(m Module) error {
	val, err := encode(m)
	if err != nil {
		return fmt.Errorf("encode module %q on device %q: %w", m.ModuleID, m.DeviceID, err)
	}
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("write module %q on device %q: %w", m.ModuleID, m.DeviceID, err)
	}
	if err := s.db.Set(s.moduleKey(m.DeviceID, m.ModuleID), val, pebble.Sync); err != nil {
		return fmt.Errorf("write module %q on device %q: %w", m.ModuleID, m.DeviceID, err)
	}
	s.cache.setModule(m)
	return nil
}

// GetDevice implements Store.
func (s *PebbleStore) GetDevice(ctx context.Context, deviceID string) (Device, error) {
	if s.closed.Load() {
		return Device{}, ErrClosed
	}
	if d, ok := s.cache.device(deviceID); ok {
		return d.clone(), nil
	}
	if err := ValidateID("deviceId", deviceID); err != nil {
		// An id that cannot exist is simply not found; callers
		// authenticating tokens should not learn more than that.
		return Device{}, fmt.Errorf("device %q: %w", deviceID, ErrDeviceNotFound)
	}
	if err := s.enter(); err != nil {
		return Device{}, err
	}
	defer s.leave()
	return s.loadDevice(deviceID)
}

// CreateDevice implements Store.
func (s *PebbleStore) CreateDevice(ctx context.Context, d Device) (Device, error) {
	d, err := prepareDevice(d, nil)
	if err != nil {
		return Device{}, err
	}
	if err := s.enter(); err != nil {
		return Device{}, err
	}
	defer s.leave()
	mu := s.stripe(d.DeviceID)
	mu.Lock()
	defer mu.Unlock()

	if _, err := s.loadDevice(d.DeviceID); err == nil {
		return Device{}, fmt.Errorf("device %q: %w", d.DeviceID, ErrDeviceAlreadyExists)
	} else if !errors.Is(err, ErrDeviceNotFound) {
		return Device{}, err
	}
	now := time.Now().UTC()
	etag, err := newETag()
	if err != nil {
		return Device{}, err
	}
	d.GenerationID = s.newGenerationID(now)
	d.ETag = etag
	d.ConnectionState = Disconnected
	d.ConnectionStateUpdatedTime = time.Time{}
	d.StatusUpdatedTime = time.Time{}
	d.LastActivityTime = time.Time{}
	d.CloudToDeviceMessageCount = 0
	if err := s.putDevice(d); err != nil {
		return Device{}, err
	}
	return d, nil
}

// ReplaceDevice implements Store.
func (s *PebbleStore) ReplaceDevice(ctx context.Context, d Device, ifMatch string) (Device, error) {
	if err := ValidateID("deviceId", d.DeviceID); err != nil {
		return Device{}, err
	}
	if err := s.enter(); err != nil {
		return Device{}, err
	}
	defer s.leave()
	mu := s.stripe(d.DeviceID)
	mu.Lock()
	defer mu.Unlock()

	cur, err := s.loadDevice(d.DeviceID)
	if err != nil {
		return Device{}, err
	}
	if !etagMatches(ifMatch, cur.ETag) {
		return Device{}, fmt.Errorf("device %q: %w", d.DeviceID, ErrPreconditionFailed)
	}
	if d, err = prepareReplacement(d, cur); err != nil {
		return Device{}, err
	}
	if d.ETag, err = newETag(); err != nil {
		return Device{}, err
	}
	if err := s.putDevice(d); err != nil {
		return Device{}, err
	}
	return d, nil
}

// DeleteDevice implements Store.
func (s *PebbleStore) DeleteDevice(ctx context.Context, deviceID, ifMatch string) error {
	if err := ValidateID("deviceId", deviceID); err != nil {
		return fmt.Errorf("device %q: %w", deviceID, ErrDeviceNotFound)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	mu := s.stripe(deviceID)
	mu.Lock()
	defer mu.Unlock()

	cur, err := s.loadDevice(deviceID)
	if err != nil {
		return err
	}
	if !etagMatches(ifMatch, cur.ETag) {
		return fmt.Errorf("device %q: %w", deviceID, ErrPreconditionFailed)
	}
	// A deletion writes tombstones to the WAL like any other write.
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("delete device %q: %w", deviceID, err)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.Delete(s.deviceKey(deviceID), nil); err != nil {
		return fmt.Errorf("delete device %q: %w", deviceID, err)
	}
	mp := s.modulePrefix(deviceID)
	if err := b.DeleteRange(mp, prefixEnd(mp), nil); err != nil {
		return fmt.Errorf("delete modules of device %q: %w", deviceID, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("delete device %q: %w", deviceID, err)
	}
	s.cache.deleteDevice(deviceID)
	return nil
}

// RegenerateDeviceKey implements Store.
func (s *PebbleStore) RegenerateDeviceKey(ctx context.Context, deviceID string, which KeyKind, ifMatch string) (Device, error) {
	if err := ValidateID("deviceId", deviceID); err != nil {
		return Device{}, fmt.Errorf("device %q: %w", deviceID, ErrDeviceNotFound)
	}
	if err := s.enter(); err != nil {
		return Device{}, err
	}
	defer s.leave()
	mu := s.stripe(deviceID)
	mu.Lock()
	defer mu.Unlock()

	d, err := s.loadDevice(deviceID)
	if err != nil {
		return Device{}, err
	}
	if !etagMatches(ifMatch, d.ETag) {
		return Device{}, fmt.Errorf("device %q: %w", deviceID, ErrPreconditionFailed)
	}
	a, err := regenerate(d.Authentication, which)
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", deviceID, err)
	}
	etag, err := newETag()
	if err != nil {
		return Device{}, err
	}
	d.Authentication = a
	d.ETag = etag
	if err := s.putDevice(d); err != nil {
		return Device{}, err
	}
	return d, nil
}

func regenerate(a Authentication, which KeyKind) (Authentication, error) {
	if a.Type != AuthSAS {
		return a, fmt.Errorf("%w: keys can only be regenerated for authentication type sas, not %q", ErrInvalidArgument, a.Type)
	}
	switch which {
	case KeyPrimary, KeySecondary:
		k, err := NewKey()
		if err != nil {
			return a, err
		}
		if which == KeyPrimary {
			a.SymmetricKey.PrimaryKey = k
		} else {
			a.SymmetricKey.SecondaryKey = k
		}
	case KeySwap:
		a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey = a.SymmetricKey.SecondaryKey, a.SymmetricKey.PrimaryKey
	default:
		return a, fmt.Errorf("%w: unknown key kind %d", ErrInvalidArgument, which)
	}
	return a, nil
}

// ListDevices implements Store.
func (s *PebbleStore) ListDevices(ctx context.Context, after string, limit int) ([]Device, error) {
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	lo := s.deviceKey("")
	if after != "" {
		lo = append(s.deviceKey(after), 0)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(s.deviceKey(""))})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer it.Close()
	var out []Device
	for ok := it.First(); ok; ok = it.Next() {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		var d Device
		if err := decode(it.Value(), &d); err != nil {
			return nil, fmt.Errorf("decode device at key %q: %w", it.Key(), err)
		}
		out = append(out, d)
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// CountDevices implements Store. It scans the devices, which is fine for
// the statistics endpoint it serves.
func (s *PebbleStore) CountDevices(ctx context.Context) (total, enabled int, err error) {
	if err := s.enter(); err != nil {
		return 0, 0, err
	}
	defer s.leave()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: s.deviceKey(""), UpperBound: prefixEnd(s.deviceKey(""))})
	if err != nil {
		return 0, 0, fmt.Errorf("count devices: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		if err := ctx.Err(); err != nil {
			return 0, 0, fmt.Errorf("count devices: %w", err)
		}
		var st struct {
			Status Status `json:"status"`
		}
		if err := decode(it.Value(), &st); err != nil {
			return 0, 0, fmt.Errorf("decode device at key %q: %w", it.Key(), err)
		}
		total++
		if st.Status == StatusEnabled {
			enabled++
		}
	}
	if err := it.Error(); err != nil {
		return 0, 0, fmt.Errorf("count devices: %w", err)
	}
	return total, enabled, nil
}

// GetModule implements Store.
func (s *PebbleStore) GetModule(ctx context.Context, deviceID, moduleID string) (Module, error) {
	if s.closed.Load() {
		return Module{}, ErrClosed
	}
	if m, ok := s.cache.module(deviceID, moduleID); ok {
		return m, nil
	}
	if ValidateID("deviceId", deviceID) != nil || ValidateID("moduleId", moduleID) != nil {
		return Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrModuleNotFound)
	}
	if err := s.enter(); err != nil {
		return Module{}, err
	}
	defer s.leave()
	return s.loadModule(deviceID, moduleID)
}

// CreateModule implements Store.
func (s *PebbleStore) CreateModule(ctx context.Context, m Module) (Module, error) {
	m, err := prepareModule(m, nil)
	if err != nil {
		return Module{}, err
	}
	if err := s.enter(); err != nil {
		return Module{}, err
	}
	defer s.leave()
	mu := s.stripe(m.DeviceID)
	mu.Lock()
	defer mu.Unlock()

	if _, err := s.loadDevice(m.DeviceID); err != nil {
		return Module{}, err
	}
	if _, err := s.loadModule(m.DeviceID, m.ModuleID); err == nil {
		return Module{}, fmt.Errorf("module %q on device %q: %w", m.ModuleID, m.DeviceID, ErrModuleAlreadyExists)
	} else if !errors.Is(err, ErrModuleNotFound) {
		return Module{}, err
	}
	etag, err := newETag()
	if err != nil {
		return Module{}, err
	}
	m.GenerationID = s.newGenerationID(time.Now())
	m.ETag = etag
	m.ConnectionState = Disconnected
	m.ConnectionStateUpdatedTime = time.Time{}
	m.LastActivityTime = time.Time{}
	m.CloudToDeviceMessageCount = 0
	if err := s.putModule(m); err != nil {
		return Module{}, err
	}
	return m, nil
}

// ReplaceModule implements Store.
func (s *PebbleStore) ReplaceModule(ctx context.Context, m Module, ifMatch string) (Module, error) {
	if err := ValidateID("deviceId", m.DeviceID); err != nil {
		return Module{}, err
	}
	if err := ValidateID("moduleId", m.ModuleID); err != nil {
		return Module{}, err
	}
	if err := s.enter(); err != nil {
		return Module{}, err
	}
	defer s.leave()
	mu := s.stripe(m.DeviceID)
	mu.Lock()
	defer mu.Unlock()

	cur, err := s.loadModule(m.DeviceID, m.ModuleID)
	if err != nil {
		return Module{}, err
	}
	if !etagMatches(ifMatch, cur.ETag) {
		return Module{}, fmt.Errorf("module %q on device %q: %w", m.ModuleID, m.DeviceID, ErrPreconditionFailed)
	}
	if m, err = prepareModuleReplacement(m, cur); err != nil {
		return Module{}, err
	}
	if m.ETag, err = newETag(); err != nil {
		return Module{}, err
	}
	if err := s.putModule(m); err != nil {
		return Module{}, err
	}
	return m, nil
}

// DeleteModule implements Store.
func (s *PebbleStore) DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error {
	if ValidateID("deviceId", deviceID) != nil || ValidateID("moduleId", moduleID) != nil {
		return fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrModuleNotFound)
	}
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	mu := s.stripe(deviceID)
	mu.Lock()
	defer mu.Unlock()

	cur, err := s.loadModule(deviceID, moduleID)
	if err != nil {
		return err
	}
	if !etagMatches(ifMatch, cur.ETag) {
		return fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrPreconditionFailed)
	}
	if err := s.guard.Check(); err != nil {
		return fmt.Errorf("delete module %q on device %q: %w", moduleID, deviceID, err)
	}
	if err := s.db.Delete(s.moduleKey(deviceID, moduleID), pebble.Sync); err != nil {
		return fmt.Errorf("delete module %q on device %q: %w", moduleID, deviceID, err)
	}
	s.cache.deleteModule(deviceID, moduleID)
	return nil
}

// RegenerateModuleKey implements Store.
func (s *PebbleStore) RegenerateModuleKey(ctx context.Context, deviceID, moduleID string, which KeyKind, ifMatch string) (Module, error) {
	if ValidateID("deviceId", deviceID) != nil || ValidateID("moduleId", moduleID) != nil {
		return Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrModuleNotFound)
	}
	if err := s.enter(); err != nil {
		return Module{}, err
	}
	defer s.leave()
	mu := s.stripe(deviceID)
	mu.Lock()
	defer mu.Unlock()

	m, err := s.loadModule(deviceID, moduleID)
	if err != nil {
		return Module{}, err
	}
	if !etagMatches(ifMatch, m.ETag) {
		return Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, ErrPreconditionFailed)
	}
	a, err := regenerate(m.Authentication, which)
	if err != nil {
		return Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, err)
	}
	etag, err := newETag()
	if err != nil {
		return Module{}, err
	}
	m.Authentication = a
	m.ETag = etag
	if err := s.putModule(m); err != nil {
		return Module{}, err
	}
	return m, nil
}

// ListModules implements Store.
func (s *PebbleStore) ListModules(ctx context.Context, deviceID string) ([]Module, error) {
	if err := ValidateID("deviceId", deviceID); err != nil {
		return nil, fmt.Errorf("device %q: %w", deviceID, ErrDeviceNotFound)
	}
	if err := s.enter(); err != nil {
		return nil, err
	}
	defer s.leave()
	if _, err := s.loadDevice(deviceID); err != nil {
		return nil, err
	}
	mp := s.modulePrefix(deviceID)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: mp, UpperBound: prefixEnd(mp)})
	if err != nil {
		return nil, fmt.Errorf("list modules of %q: %w", deviceID, err)
	}
	defer it.Close()
	out := []Module{}
	for ok := it.First(); ok; ok = it.Next() {
		var m Module
		if err := decode(it.Value(), &m); err != nil {
			return nil, fmt.Errorf("decode module at key %q: %w", it.Key(), err)
		}
		out = append(out, m)
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("list modules of %q: %w", deviceID, err)
	}
	return out, nil
}
