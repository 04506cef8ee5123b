//go:build !unix

package seglog

import (
	"fmt"
	"os"
)

// lockDir only creates the lock file where flock is not available.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	return f, nil
}
