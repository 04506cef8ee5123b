//go:build !linux

package main

import "os"

// fdatasync falls back to a full sync where the call does not exist.
func fdatasync(f *os.File) error { return f.Sync() }
