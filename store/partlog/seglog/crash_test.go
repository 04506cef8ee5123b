package seglog

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"amqphub/store/partlog"
)

const (
	crashDirEnv   = "SEGLOG_CRASH_DIR"
	crashRoundEnv = "SEGLOG_CRASH_ROUND"
	crashAcks     = 4000 // acknowledgements the parent waits for before SIGKILL
)

func crashOptions() Options {
	return Options{Partitions: 4, SegmentSize: 64 << 10, IndexInterval: 1024}
}

// TestCrashKill re-executes the test binary as a child that appends from
// several goroutines and prints every acknowledged record, SIGKILLs it in
// the middle of its work, reopens the log and checks that every
// acknowledged record is there, intact, and that numbering has no gap. It
// does this three times on the same directory.
func TestCrashKill(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	type pos struct {
		p   int
		seq int64
	}
	acked := map[pos]uint64{}
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashRoundEnv+"="+strconv.Itoa(round))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var p int
			var seq int64
			var key uint64
			// The kill can cut the last line short; only a line with its
			// end marker counts.
			line := sc.Text()
			if !strings.HasSuffix(line, " end") {
				continue
			}
			if _, err := fmt.Sscanf(line, "ack %d %d %d end", &p, &seq, &key); err != nil {
				t.Fatalf("child printed %q: %v", line, err)
			}
			if prev, ok := acked[pos{p, seq}]; ok && prev != key {
				t.Fatalf("partition %d seq %d acknowledged for keys %x and %x", p, seq, prev, key)
			}
			acked[pos{p, seq}] = key
			if n++; n == crashAcks {
				_ = cmd.Process.Kill() // SIGKILL: no chance to flush or close
			}
		}
		_, _ = io.Copy(io.Discard, out)
		err = cmd.Wait()
		if n < crashAcks {
			t.Fatalf("round %d: child exited after %d acks (%v): %s", round, n, err, stderr.Bytes())
		}

		l := mustOpen(t, dir, crashOptions())
		total := 0
		for p := range 4 {
			recs := readAll(t, l, p)
			for i, r := range recs {
				if r.Seq != int64(i) {
					t.Fatalf("round %d partition %d: record %d has seq %d", round, p, i, r.Seq)
				}
				// Unacknowledged records may survive, but whole.
				key := binary.LittleEndian.Uint64(r.Payload)
				if !bytes.Equal(r.Payload, payloadFor(key, len(r.Payload))) {
					t.Fatalf("round %d partition %d seq %d: damaged payload", round, p, r.Seq)
				}
			}
			for at, key := range acked {
				if at.p != p {
					continue
				}
				if at.seq >= int64(len(recs)) {
					t.Fatalf("round %d: acknowledged partition %d seq %d lost (partition ends at %d)", round, p, at.seq, len(recs))
				}
				if got := binary.LittleEndian.Uint64(recs[at.seq].Payload); got != key {
					t.Fatalf("round %d: partition %d seq %d holds key %x, acknowledged %x", round, p, at.seq, got, key)
				}
			}
			total += len(recs)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d acks read before the kill, %d acknowledged in all, %d records stored", round, n, len(acked), total)
	}
}

// crashChild appends until it is killed, printing "ack <partition> <seq>
// <key> end" for every acknowledged record, after the acknowledgement.
func crashChild(dir string) {
	round, _ := strconv.Atoi(os.Getenv(crashRoundEnv))
	// A parent that died must not leave the child running.
	time.AfterFunc(30*time.Second, func() { os.Exit(3) })
	o := crashOptions()
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	l, err := Open(dir, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	type ack struct {
		p   int
		seq int64
		key uint64
	}
	acks := make(chan ack, 1<<16)
	go func() {
		w := bufio.NewWriter(os.Stdout)
		for a := range acks {
			fmt.Fprintf(w, "ack %d %d %d end\n", a.p, a.seq, a.key)
			if len(acks) == 0 {
				_ = w.Flush()
			}
		}
	}()
	for g := range 4 {
		go func() {
			for i := 0; ; i++ {
				key := uint64(round)<<40 | uint64(g)<<32 | uint64(i)
				p := (g + i) % 4
				err := l.AppendAsync(p, payloadFor(key, 8+i%300), func(e partlog.Entry, err error) {
					if err == nil {
						acks <- ack{p, e.Seq, key}
					}
				})
				if err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					os.Exit(2)
				}
			}
		}()
	}
	select {}
}
