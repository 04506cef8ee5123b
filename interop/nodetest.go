// Package interop runs the Node.js interop suites (rhea and the official
// Azure SDKs, in interop/node) against in-process servers.
package interop

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// NodeDir returns the interop/node directory.
func NodeDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "node")
}

// RunNode runs `node --test` on the given files (relative to interop/node)
// with env added, failing the test with node's output if it fails. It
// fails, rather than skips, when node or the npm packages are missing:
// the interop suite is part of the tests.
func RunNode(t *testing.T, timeout time.Duration, env []string, files ...string) {
	t.Helper()
	dir := NodeDir()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not installed: the interop suite needs Node.js 20 (apt-get install nodejs npm)")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "rhea")); err != nil {
		t.Fatalf("npm packages are missing: run `npm ci` in %s (make test does)", dir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// --test-force-exit: a client a failed test left open must not keep
	// node alive until the timeout.
	args := append([]string{"--test", "--test-force-exit", "--test-reporter=spec"}, files...)
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if testing.Verbose() || err != nil {
		t.Logf("node --test %v:\n%s", files, out.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("node --test %v timed out after %v", files, timeout)
	}
	if err != nil {
		t.Fatalf("node --test %v failed: %v", files, err)
	}
}

// Env formats KEY=value pairs.
func Env(kv ...any) []string {
	var out []string
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, fmt.Sprintf("%v=%v", kv[i], kv[i+1]))
	}
	return out
}
