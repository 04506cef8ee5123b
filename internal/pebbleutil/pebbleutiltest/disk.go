// Package pebbleutiltest fakes a disk for tests of the free-space guard.
package pebbleutiltest

import (
	"sync/atomic"

	"amqphub/internal/pebbleutil"
)

// Disk is an injected statfs whose free space the test sets: plenty until
// Full, plenty again after Freed.
type Disk struct {
	free   atomic.Uint64
	checks atomic.Int64
}

// Plenty and Little are the free space a Disk reports when not full and
// when full; Reserve (between them) is the reserve Options asks for.
const (
	Plenty  = 1 << 30
	Little  = 1000
	Reserve = 1 << 20
)

// NewDisk returns a disk with plenty of free space.
func NewDisk() *Disk {
	d := &Disk{}
	d.free.Store(Plenty)
	return d
}

// Full makes the disk report less free space than the reserve.
func (d *Disk) Full() { d.free.Store(Little) }

// Freed makes the disk report plenty of free space again.
func (d *Disk) Freed() { d.free.Store(Plenty) }

// StatFS is the injected statfs.
func (d *Disk) StatFS(string) (uint64, error) {
	d.checks.Add(1)
	return d.free.Load(), nil
}

// Checks returns how many times the guard has read the free space, so a
// test can wait until a write was tried.
func (d *Disk) Checks() int64 { return d.checks.Load() }

// Options are guard options that read this disk on every check.
func (d *Disk) Options() pebbleutil.GuardOptions {
	return pebbleutil.GuardOptions{Reserve: Reserve, Interval: -1, StatFS: d.StatFS}
}
