// Command fsynclat measures what a durable write costs on this machine's
// disk: it writes 4 KiB and calls fdatasync, n times, in a file in the
// given directory, and prints the latency percentiles. BENCHMARKS.md
// quotes it to say what the group-committed log is up against.
//
//	go run ./bench/fsynclat [-n 500] [-dir /tmp]
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"time"
)

func main() {
	n := flag.Int("n", 500, "writes")
	dir := flag.String("dir", os.TempDir(), "directory of the scratch file")
	flag.Parse()
	if err := run(*n, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "fsynclat:", err)
		os.Exit(1)
	}
}

func run(n int, dir string) error {
	if n < 1 {
		return fmt.Errorf("-n must be positive, got %d", n)
	}
	f, err := os.CreateTemp(dir, "fsynclat-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	ds := make([]time.Duration, 0, n)
	for i := range n {
		t := time.Now()
		if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := fdatasync(f); err != nil {
			return fmt.Errorf("fdatasync: %w", err)
		}
		ds = append(ds, time.Since(t))
	}
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	fmt.Printf("write+fdatasync 4 KiB, %d times: p50 %v  p90 %v  p99 %v  max %v\n", n, at(0.5), at(0.9), at(0.99), ds[len(ds)-1])
	return nil
}
