package interop

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// LockPort serializes tests (across packages and processes) that must bind
// a fixed well-known port, such as 443 for the Node SDK's AmqpWs transport,
// which always dials 443. The lock is released when the test ends.
func LockPort(t testing.TB, port int) {
	t.Helper()
	path := filepath.Join(os.TempDir(), fmt.Sprintf("amqphub-port-%d.lock", port))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("port lock %s: %v", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("port lock %s: %v", path, err)
	}
	t.Cleanup(func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}
