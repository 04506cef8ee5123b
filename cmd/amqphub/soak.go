package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"amqphub/internal/soak"
)

// soakCmd runs the crash soak: it starts `amqphub serve` (this binary, or
// --binary) as a child on a data directory, drives devices and a service
// against it, SIGKILLs it at random moments, restarts it on the same
// directory and ports, and verifies that nothing acknowledged was lost or
// duplicated. It fails (exit status 1) if the soak found a problem.
func soakCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cycles   = fs.Int("cycles", 5, "how many times to SIGKILL the hub")
		duration = fs.Duration("duration", 10*time.Minute, "bound on the whole run (no new cycle starts after it)")
		minUp    = fs.Duration("min-up", time.Second, "shortest time under load before a kill")
		maxUp    = fs.Duration("max-up", 5*time.Second, "longest time under load before a kill")
		devices  = fs.Int("devices", 4, "devices sending telemetry and receiving C2D")
		inflight = fs.Int("inflight", 64, "unacknowledged messages per device")
		size     = fs.Int("size", 256, "telemetry body size in bytes")
		parts    = fs.Int("partitions", 4, "telemetry partitions of the hub under test")
		dataDir  = fs.String("data-dir", "", "data directory of the hub under test (default: a new temporary directory)")
		keep     = fs.Bool("keep", false, "keep the temporary data directory")
		binary   = fs.String("binary", "", "amqphub binary to test (default: this one)")
		seed     = fs.Uint64("seed", 0, "seed for the kill moments (default: random, printed)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("soak: unexpected argument %q", fs.Arg(0))
	}
	bin := *binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("soak: own executable: %w", err)
		}
		bin = exe
	}
	dir := *dataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "amqphub-soak-")
		if err != nil {
			return err
		}
		dir = tmp
		if *keep {
			fmt.Fprintf(stdout, "soak: data directory %s (kept)\n", dir)
		} else {
			defer os.RemoveAll(dir)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := soak.Run(ctx, soak.Config{
		Launch:      soak.BinaryLauncher(bin),
		DataDir:     dir,
		Cycles:      *cycles,
		Duration:    *duration,
		MinUptime:   *minUp,
		MaxUptime:   *maxUp,
		Devices:     *devices,
		InFlight:    *inflight,
		MessageSize: *size,
		Partitions:  *parts,
		Seed:        *seed,
		Progress:    stdout,
	})
	if err != nil {
		return err
	}
	rep.Print(stdout)
	if !rep.OK() {
		return fmt.Errorf("soak: %d problems found", rep.ProblemCount)
	}
	return nil
}
