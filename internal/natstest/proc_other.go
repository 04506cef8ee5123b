//go:build !linux

package natstest

import "os/exec"

// setDeathSignal does nothing where the platform has no parent-death
// signal; the test's cleanup still kills the servers.
func setDeathSignal(*exec.Cmd) {}
