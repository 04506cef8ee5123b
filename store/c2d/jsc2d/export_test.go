package jsc2d

import (
	"context"
	"time"
)

// SweepOrphans exposes the orphan-body sweep to the tests, with the age a
// body must have.
func (s *Store) SweepOrphans(ctx context.Context, age time.Duration) error {
	return s.sweepOrphans(ctx, age)
}

// BodyExists reports whether the bodies stream still holds seq.
func (s *Store) BodyExists(ctx context.Context, seq uint64) bool {
	_, err := s.bodies.GetMsg(ctx, seq)
	return err == nil
}

// PutOrphanBody stores a body no queue names, as a failed Enqueue leaves.
func (s *Store) PutOrphanBody(ctx context.Context, queueID string) (uint64, error) {
	return s.putBody(ctx, queueID, []byte("orphan"))
}
