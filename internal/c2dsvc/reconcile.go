package c2dsvc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"amqphub/internal/registry"
)

// Reconcile drops the queued messages and pending feedback of devices (and
// modules) that no longer exist, and those of earlier generations of
// devices that were deleted and created again, without feedback. Setup runs
// it once and then every ReconcileInterval.
func (s *Service) Reconcile(ctx context.Context) error {
	defer s.pruneLost()
	gens, err := s.store.Generations(ctx)
	if err != nil {
		return fmt.Errorf("reconcile with the registry: %w", err)
	}
	var firstErr error
	for q, list := range gens {
		cur, exists, err := s.currentGeneration(ctx, q)
		if err != nil {
			// A registry outage must not drop anything: try again later.
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		switch {
		case !exists:
			err = s.store.DeleteQueue(ctx, q)
			if err == nil {
				s.log.Info("c2d: dropped the queue and feedback of a deleted device", "queue", q)
			}
		case len(list) == 1 && list[0] == cur:
			continue
		default:
			var n int
			n, err = s.store.DropGenerations(ctx, q, cur)
			if err == nil {
				s.log.Info("c2d: dropped messages and feedback of a deleted device", "queue", q, "messages", n)
			}
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("reconcile queue %q: %w", q, err)
		}
	}
	return firstErr
}

// currentGeneration returns the generation id of the device or module that
// owns queue q, and whether it exists.
func (s *Service) currentGeneration(ctx context.Context, q string) (string, bool, error) {
	deviceID, moduleID, _ := strings.Cut(q, "/modules/")
	if moduleID == "" {
		d, err := s.reg.GetDevice(ctx, deviceID)
		if errors.Is(err, registry.ErrDeviceNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("look up device %q: %w", deviceID, err)
		}
		return d.GenerationID, true, nil
	}
	m, err := s.reg.GetModule(ctx, deviceID, moduleID)
	if errors.Is(err, registry.ErrDeviceNotFound) || errors.Is(err, registry.ErrModuleNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("look up module %q/%q: %w", deviceID, moduleID, err)
	}
	return m.GenerationID, true, nil
}

func (s *Service) reconcileLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return
		}
		if err := s.Reconcile(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Error("c2d: reconciling queues with the registry failed", "err", err)
		}
	}
}
