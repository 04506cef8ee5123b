package seglog

import (
	"fmt"
	"os"
	"path/filepath"
)

// segFile is the part of *os.File the log uses for segment data. Tests
// substitute implementations that fail like a full or broken disk.
type segFile interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes written data durable (fdatasync where available).
	Sync() error
	Truncate(size int64) error
	Close() error
}

// openFunc opens a segment file; see os.OpenFile.
type openFunc func(name string, flag int, perm os.FileMode) (segFile, error)

// osFile is a segFile backed by the operating system.
type osFile struct{ *os.File }

func (f osFile) Sync() error { return datasync(f.File) }

func openOSFile(name string, flag int, perm os.FileMode) (segFile, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// syncDir makes directory entries (created, renamed files) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for sync: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic replaces name with data: write to a temporary file, sync
// it if durable is set, rename it over name and sync the directory.
func writeFileAtomic(name string, data []byte, durable bool) error {
	tmp := name + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && durable {
		err = datasync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if durable {
		return syncDir(filepath.Dir(name))
	}
	return nil
}
