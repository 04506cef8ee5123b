package loadgen

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is the unit of /proc/<pid>/stat CPU times (USER_HZ), 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// processCPU returns the CPU time (user + system) process pid has used.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("loadgen: %w", err)
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from the closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("loadgen: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("loadgen: /proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("loadgen: /proc/%d/stat: bad CPU times", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// selfCPU returns the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter measures how many cores the load generator and (when its
// process id is known) the hub used over an interval.
type cpuMeter struct {
	hubPID int
	start  time.Time
	self0  time.Duration
	hub0   time.Duration
	hubOK  bool
}

func startCPU(hubPID int) *cpuMeter {
	m := &cpuMeter{hubPID: hubPID, start: time.Now(), self0: selfCPU()}
	if hubPID > 0 {
		if d, err := processCPU(hubPID); err == nil {
			m.hub0, m.hubOK = d, true
		}
	}
	return m
}

// stop fills the report's CPU figures.
func (m *cpuMeter) stop(rep *Report) {
	el := time.Since(m.start).Seconds()
	rep.LoadgenCores = (selfCPU() - m.self0).Seconds() / el
	if m.hubOK {
		if d, err := processCPU(m.hubPID); err == nil {
			rep.HubCores = (d - m.hub0).Seconds() / el
		}
	}
}
