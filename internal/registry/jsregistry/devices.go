package jsregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/registry"
)

func deviceChange(d registry.Device, rev uint64) change {
	return change{key: deviceKey(d.DeviceID), rev: rev, deviceID: d.DeviceID, dev: d}
}

// GetDevice implements registry.Store from memory.
func (s *Store) GetDevice(ctx context.Context, deviceID string) (registry.Device, error) {
	if s.closed.Load() {
		return registry.Device{}, registry.ErrClosed
	}
	if e, ok := s.cache.device(deviceID); ok {
		return e.d.Clone(), nil
	}
	return registry.Device{}, fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound)
}

// ListDevices implements registry.Store from memory.
func (s *Store) ListDevices(ctx context.Context, after string, limit int) ([]registry.Device, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	return s.cache.listDevices(after, limit), nil
}

// CountDevices implements registry.Store from memory.
func (s *Store) CountDevices(ctx context.Context) (total, enabled int, err error) {
	if s.closed.Load() {
		return 0, 0, registry.ErrClosed
	}
	total, enabled = s.cache.count()
	return total, enabled, nil
}

// CreateDevice implements registry.Store.
func (s *Store) CreateDevice(ctx context.Context, d registry.Device) (registry.Device, error) {
	d, err := registry.PrepareDevice(d, nil)
	if err != nil {
		return registry.Device{}, err
	}
	op := fmt.Sprintf("create device %q", d.DeviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return registry.Device{}, err
	}
	defer cancel()
	defer s.lock(d.DeviceID)()

	// Modules left by an unfinished cascade must not reappear under the
	// new device.
	if _, ok := s.cache.device(d.DeviceID); !ok {
		if err := s.sweepModules(ctx, d.DeviceID, false); err != nil {
			return registry.Device{}, unavailable(op, err)
		}
	}
	etag, err := registry.NewETag()
	if err != nil {
		return registry.Device{}, err
	}
	d.GenerationID = registry.NewGenerationID(time.Now())
	d.ETag = etag
	d.ConnectionState = registry.Disconnected
	d.ConnectionStateUpdatedTime = time.Time{}
	d.StatusUpdatedTime = time.Time{}
	d.LastActivityTime = time.Time{}
	d.CloudToDeviceMessageCount = 0
	val, err := json.Marshal(d)
	if err != nil {
		return registry.Device{}, fmt.Errorf("%s: encode: %w", op, err)
	}
	rev, err := s.kv.Create(ctx, deviceKey(d.DeviceID), val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return registry.Device{}, fmt.Errorf("device %q: %w", d.DeviceID, registry.ErrDeviceAlreadyExists)
	}
	if err != nil {
		return registry.Device{}, unavailable(op, err)
	}
	s.applyLocal(deviceChange(d.Clone(), rev))
	return d, nil
}

// ReplaceDevice implements registry.Store.
func (s *Store) ReplaceDevice(ctx context.Context, d registry.Device, ifMatch string) (registry.Device, error) {
	if err := registry.ValidateID("deviceId", d.DeviceID); err != nil {
		return registry.Device{}, err
	}
	return s.updateDevice(ctx, "replace", d.DeviceID, ifMatch, func(cur registry.Device) (registry.Device, error) {
		return registry.PrepareReplacement(d, cur)
	})
}

// RegenerateDeviceKey implements registry.Store.
func (s *Store) RegenerateDeviceKey(ctx context.Context, deviceID string, which registry.KeyKind, ifMatch string) (registry.Device, error) {
	if err := registry.ValidateID("deviceId", deviceID); err != nil {
		return registry.Device{}, fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound)
	}
	return s.updateDevice(ctx, "regenerate key of", deviceID, ifMatch, func(cur registry.Device) (registry.Device, error) {
		a, err := registry.RegenerateKeys(cur.Authentication, which)
		if err != nil {
			return registry.Device{}, fmt.Errorf("device %q: %w", deviceID, err)
		}
		cur.Authentication = a
		return cur, nil
	})
}

// updateDevice rewrites an existing device with mutate's result and a new
// etag, compare-and-set on the revision it read. The cache may lag behind
// other nodes, so a missing device or a mismatched etag is confirmed with
// a fresh read before it is reported, and a lost race re-reads, re-checks
// ifMatch and tries again.
func (s *Store) updateDevice(ctx context.Context, verb, deviceID, ifMatch string, mutate func(registry.Device) (registry.Device, error)) (registry.Device, error) {
	op := fmt.Sprintf("%s device %q", verb, deviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return registry.Device{}, err
	}
	defer cancel()
	defer s.lock(deviceID)()

	key := deviceKey(deviceID)
	var out registry.Device
	err = casLoop(op, ifMatch, s.loadDevice(ctx, deviceID),
		func() error { return fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound) },
		func() error { return fmt.Errorf("device %q: %w", deviceID, registry.ErrPreconditionFailed) },
		func(cur registry.Device, rev uint64) (error, error) {
			nd, err := mutate(cur)
			if err != nil {
				return nil, err
			}
			if nd.ETag, err = registry.NewETag(); err != nil {
				return nil, err
			}
			nd.DeviceID = deviceID
			val, err := json.Marshal(nd)
			if err != nil {
				return nil, fmt.Errorf("%s: encode: %w", op, err)
			}
			nrev, kvErr := s.kv.Update(ctx, key, val, rev)
			if kvErr == nil {
				s.applyLocal(deviceChange(nd.Clone(), nrev))
				out = nd
			}
			return kvErr, nil
		})
	return out, err
}

// loadDevice is casLoop's load for a device: a copy of the cached record,
// or the bucket's when fresh.
func (s *Store) loadDevice(ctx context.Context, deviceID string) func(bool) (registry.Device, string, uint64, bool, error) {
	return func(fresh bool) (registry.Device, string, uint64, bool, error) {
		if !fresh {
			e, ok := s.cache.device(deviceID)
			return e.d.Clone(), e.d.ETag, e.rev, ok, nil
		}
		ch, found, err := s.fetch(ctx, deviceKey(deviceID))
		return ch.dev.Clone(), ch.dev.ETag, ch.rev, found, err
	}
}

// DeleteDevice implements registry.Store. It deletes the device's key,
// then its modules' keys; see the package documentation for a node that
// dies in between.
func (s *Store) DeleteDevice(ctx context.Context, deviceID, ifMatch string) error {
	if err := registry.ValidateID("deviceId", deviceID); err != nil {
		return fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound)
	}
	op := fmt.Sprintf("delete device %q", deviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return err
	}
	defer cancel()
	defer s.lock(deviceID)()

	key := deviceKey(deviceID)
	err = casLoop(op, ifMatch, s.loadDevice(ctx, deviceID),
		func() error {
			// A retry after a cascade that did not finish cleans up
			// what it left.
			if err := s.sweepModules(ctx, deviceID, false); err != nil {
				s.log.Warn("registry: sweeping modules of a missing device", "device", deviceID, "err", err)
			}
			return fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound)
		},
		func() error { return fmt.Errorf("device %q: %w", deviceID, registry.ErrPreconditionFailed) },
		func(_ registry.Device, rev uint64) (error, error) {
			nrev, kvErr := s.deleteKey(ctx, key, rev)
			if kvErr == nil {
				s.applyLocal(change{key: key, rev: nrev, deleted: true, deviceID: deviceID})
			}
			return kvErr, nil
		})
	if err != nil {
		return err
	}
	if err := s.sweepModules(ctx, deviceID, true); err != nil {
		// The device is gone and its modules are unreachable; the next
		// create or delete of this id sweeps them.
		s.log.Warn("registry: device deleted, some module keys left to sweep later", "device", deviceID, "err", err)
	}
	return nil
}

// sweepModules deletes the module keys stored under deviceID. The cache
// knows them all up to the watch's lag; thorough also lists the bucket,
// which catches modules another node created a moment ago.
func (s *Store) sweepModules(ctx context.Context, deviceID string, thorough bool) error {
	keys := make(map[string]string) // key → module id
	for _, mid := range s.cache.rawModules(deviceID) {
		keys[moduleKey(deviceID, mid)] = mid
	}
	if thorough {
		lister, err := s.kv.ListKeysFiltered(ctx, modulePrefix(deviceID)+">")
		if err != nil {
			return fmt.Errorf("list module keys: %w", err)
		}
		for k := range lister.Keys() {
			if _, mid, err := parseKey(k); err == nil && mid != "" {
				keys[k] = mid
			}
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list module keys: %w", err)
		}
	}
	for k, mid := range keys {
		rev, err := s.deleteKey(ctx, k, 0)
		if err != nil {
			return fmt.Errorf("delete module %q: %w", mid, err)
		}
		s.applyLocal(change{key: k, rev: rev, deleted: true, deviceID: deviceID, moduleID: mid})
	}
	return nil
}
