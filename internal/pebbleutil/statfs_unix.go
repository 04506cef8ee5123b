//go:build linux || darwin || freebsd

package pebbleutil

import (
	"fmt"
	"syscall"
)

// freeBytes returns the bytes of dir's file system available to an
// unprivileged process (the blocks reserved for root do not count: the hub
// should not rely on them).
func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}
