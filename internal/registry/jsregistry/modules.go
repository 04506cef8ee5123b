package jsregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/jskv"
	"amqphub/internal/registry"
)

func moduleChange(m registry.Module, rev uint64) change {
	return change{key: moduleKey(m.DeviceID, m.ModuleID), rev: rev, deviceID: m.DeviceID, moduleID: m.ModuleID, mod: m}
}

func modulePreconditionFailed(deviceID, moduleID string) error {
	return fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, registry.ErrPreconditionFailed)
}

func moduleNotFound(deviceID, moduleID string) error {
	return fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, registry.ErrModuleNotFound)
}

// GetModule implements registry.Store from memory.
func (s *Store) GetModule(ctx context.Context, deviceID, moduleID string) (registry.Module, error) {
	if s.closed.Load() {
		return registry.Module{}, registry.ErrClosed
	}
	if e, ok := s.cache.module(deviceID, moduleID); ok {
		return e.m, nil
	}
	return registry.Module{}, moduleNotFound(deviceID, moduleID)
}

// ListModules implements registry.Store from memory.
func (s *Store) ListModules(ctx context.Context, deviceID string) ([]registry.Module, error) {
	if s.closed.Load() {
		return nil, registry.ErrClosed
	}
	ms, ok := s.cache.listModules(deviceID)
	if !ok {
		return nil, fmt.Errorf("device %q: %w", deviceID, registry.ErrDeviceNotFound)
	}
	return ms, nil
}

// deviceExists answers from the cache, and from the bucket when the cache
// does not know the device (it may have been created on another node a
// moment ago).
func (s *Store) deviceExists(ctx context.Context, deviceID string) (bool, error) {
	if _, ok := s.cache.device(deviceID); ok {
		return true, nil
	}
	_, ok, err := s.fetch(ctx, deviceKey(deviceID))
	return ok, err
}

// CreateModule implements registry.Store.
func (s *Store) CreateModule(ctx context.Context, m registry.Module) (registry.Module, error) {
	m, err := registry.PrepareModule(m, nil)
	if err != nil {
		return registry.Module{}, err
	}
	op := fmt.Sprintf("create module %q on device %q", m.ModuleID, m.DeviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return registry.Module{}, err
	}
	defer cancel()
	defer s.lock(m.DeviceID)()

	if ok, err := s.deviceExists(ctx, m.DeviceID); err != nil {
		return registry.Module{}, unavailable(op, err)
	} else if !ok {
		return registry.Module{}, fmt.Errorf("device %q: %w", m.DeviceID, registry.ErrDeviceNotFound)
	}
	etag, err := registry.NewETag()
	if err != nil {
		return registry.Module{}, err
	}
	m.GenerationID = registry.NewGenerationID(time.Now())
	m.ETag = etag
	m.ConnectionState = registry.Disconnected
	m.ConnectionStateUpdatedTime = time.Time{}
	m.LastActivityTime = time.Time{}
	m.CloudToDeviceMessageCount = 0
	val, err := json.Marshal(m)
	if err != nil {
		return registry.Module{}, fmt.Errorf("%s: encode: %w", op, err)
	}
	key := moduleKey(m.DeviceID, m.ModuleID)
	rev, err := s.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return registry.Module{}, fmt.Errorf("module %q on device %q: %w", m.ModuleID, m.DeviceID, registry.ErrModuleAlreadyExists)
	}
	if err != nil {
		return registry.Module{}, unavailable(op, err)
	}
	s.applyLocal(moduleChange(m, rev))

	// Another node may have deleted the device, and swept its modules,
	// between the check above and the write: check again and undo.
	if _, ok, err := s.fetch(ctx, deviceKey(m.DeviceID)); err != nil {
		return registry.Module{}, unavailable(op+": check device after write", err)
	} else if !ok {
		if drev, err := s.deleteKey(ctx, key, rev); err == nil {
			s.applyLocal(change{key: key, rev: drev, deleted: true, deviceID: m.DeviceID, moduleID: m.ModuleID})
		} else if !jskv.IsConflict(err) {
			s.log.Warn("registry: module of a deleted device left to sweep later", "device", m.DeviceID, "module", m.ModuleID, "err", err)
		}
		return registry.Module{}, fmt.Errorf("device %q: %w", m.DeviceID, registry.ErrDeviceNotFound)
	}
	return m, nil
}

// ReplaceModule implements registry.Store.
func (s *Store) ReplaceModule(ctx context.Context, m registry.Module, ifMatch string) (registry.Module, error) {
	if err := registry.ValidateID("deviceId", m.DeviceID); err != nil {
		return registry.Module{}, err
	}
	if err := registry.ValidateID("moduleId", m.ModuleID); err != nil {
		return registry.Module{}, err
	}
	return s.updateModule(ctx, "replace", m.DeviceID, m.ModuleID, ifMatch, func(cur registry.Module) (registry.Module, error) {
		return registry.PrepareModuleReplacement(m, cur)
	})
}

// RegenerateModuleKey implements registry.Store.
func (s *Store) RegenerateModuleKey(ctx context.Context, deviceID, moduleID string, which registry.KeyKind, ifMatch string) (registry.Module, error) {
	if registry.ValidateID("deviceId", deviceID) != nil || registry.ValidateID("moduleId", moduleID) != nil {
		return registry.Module{}, moduleNotFound(deviceID, moduleID)
	}
	return s.updateModule(ctx, "regenerate key of", deviceID, moduleID, ifMatch, func(cur registry.Module) (registry.Module, error) {
		a, err := registry.RegenerateKeys(cur.Authentication, which)
		if err != nil {
			return registry.Module{}, fmt.Errorf("module %q on device %q: %w", moduleID, deviceID, err)
		}
		cur.Authentication = a
		return cur, nil
	})
}

// loadModule is casLoop's load for a module: as the cache has it, or as
// the bucket has it when fresh; a module whose device is missing counts as
// missing.
func (s *Store) loadModule(ctx context.Context, deviceID, moduleID string) func(bool) (registry.Module, string, uint64, bool, error) {
	return func(fresh bool) (registry.Module, string, uint64, bool, error) {
		if !fresh {
			e, ok := s.cache.module(deviceID, moduleID)
			return e.m, e.m.ETag, e.rev, ok, nil
		}
		ch, ok, err := s.fetch(ctx, moduleKey(deviceID, moduleID))
		if err != nil || !ok {
			return registry.Module{}, "", 0, false, err
		}
		if ok, err := s.deviceExists(ctx, deviceID); err != nil || !ok {
			return registry.Module{}, "", 0, false, err
		}
		return ch.mod, ch.mod.ETag, ch.rev, true, nil
	}
}

// updateModule is updateDevice for modules.
func (s *Store) updateModule(ctx context.Context, verb, deviceID, moduleID, ifMatch string, mutate func(registry.Module) (registry.Module, error)) (registry.Module, error) {
	op := fmt.Sprintf("%s module %q on device %q", verb, moduleID, deviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return registry.Module{}, err
	}
	defer cancel()
	defer s.lock(deviceID)()

	key := moduleKey(deviceID, moduleID)
	var out registry.Module
	err = casLoop(op, ifMatch, s.loadModule(ctx, deviceID, moduleID),
		func() error { return moduleNotFound(deviceID, moduleID) },
		func() error { return modulePreconditionFailed(deviceID, moduleID) },
		func(cur registry.Module, rev uint64) (error, error) {
			nm, err := mutate(cur)
			if err != nil {
				return nil, err
			}
			if nm.ETag, err = registry.NewETag(); err != nil {
				return nil, err
			}
			nm.DeviceID, nm.ModuleID = deviceID, moduleID
			val, err := json.Marshal(nm)
			if err != nil {
				return nil, fmt.Errorf("%s: encode: %w", op, err)
			}
			nrev, kvErr := s.kv.Update(ctx, key, val, rev)
			if kvErr == nil {
				s.applyLocal(moduleChange(nm, nrev))
				out = nm
			}
			return kvErr, nil
		})
	return out, err
}

// DeleteModule implements registry.Store.
func (s *Store) DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error {
	if registry.ValidateID("deviceId", deviceID) != nil || registry.ValidateID("moduleId", moduleID) != nil {
		return moduleNotFound(deviceID, moduleID)
	}
	op := fmt.Sprintf("delete module %q on device %q", moduleID, deviceID)
	ctx, cancel, err := s.begin(ctx, op)
	if err != nil {
		return err
	}
	defer cancel()
	defer s.lock(deviceID)()

	key := moduleKey(deviceID, moduleID)
	return casLoop(op, ifMatch, s.loadModule(ctx, deviceID, moduleID),
		func() error { return moduleNotFound(deviceID, moduleID) },
		func() error { return modulePreconditionFailed(deviceID, moduleID) },
		func(_ registry.Module, rev uint64) (error, error) {
			nrev, kvErr := s.deleteKey(ctx, key, rev)
			if kvErr == nil {
				s.applyLocal(change{key: key, rev: nrev, deleted: true, deviceID: deviceID, moduleID: moduleID})
			}
			return kvErr, nil
		})
}
