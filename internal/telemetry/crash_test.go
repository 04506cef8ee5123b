package telemetry_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog/seglog"
)

const (
	crashDirEnv    = "TELEMETRY_CRASH_DIR"
	crashDevice    = "crash-dev"
	crashRounds    = 3
	crashAcks      = 1500 // acknowledgements per round before SIGKILL
	crashInFlight  = 256
	crashPartition = 2
)

var crashKey = base64.StdEncoding.EncodeToString([]byte("crash-test-device-key-0123456789"))

// TestCrashKill runs the hub as a child process (this test binary,
// re-executed) on a data directory, has a device send as fast as it can
// with many messages in flight while recording which were acknowledged,
// SIGKILLs the child, and restarts it on the same directory, three times.
// Then it opens the log and checks that every acknowledged message is
// stored exactly once, in order, with sequence numbers that continue
// across the restarts without gap or repeat.
func TestCrashKill(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns hub processes")
	}
	dir := t.TempDir()
	var acked []string
	for round := range crashRounds {
		acked = append(acked, crashRound(t, dir, round)...)
	}

	lg, err := seglog.Open(filepath.Join(dir, "telemetry"), seglog.Options{})
	if err != nil {
		t.Fatalf("reopen the log: %v", err)
	}
	defer lg.Close()
	recs := readAll(t, lg, telemetry.Partition(crashDevice, crashPartition))
	seen := map[string]int{}
	last := [crashRounds]int{-1, -1, -1}
	for i, rec := range recs {
		if rec.Seq != int64(i) {
			t.Fatalf("record %d has sequence number %d: gap or repeat", i, rec.Seq)
		}
		m := decodeRecord(t, rec)
		id, _ := m.Properties.MessageID.(string)
		seen[id]++
		var round, n int
		if _, err := fmt.Sscanf(id, "r%d-%d", &round, &n); err != nil || round < 0 || round >= crashRounds {
			t.Fatalf("record %d: unexpected message-id %q", i, id)
		}
		for r := round + 1; r < crashRounds; r++ {
			if last[r] >= 0 {
				t.Fatalf("record %d (%s) stored after messages of round %d", i, id, r)
			}
		}
		if n <= last[round] {
			t.Fatalf("record %d: %s after r%d-%d: order lost", i, id, round, last[round])
		}
		last[round] = n
	}
	for id, c := range seen {
		if c > 1 {
			t.Errorf("message %s stored %d times", id, c)
		}
	}
	missing := 0
	for _, id := range acked {
		if seen[id] != 1 {
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged message %s is not in the log", id)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages lost", missing, len(acked))
	}
	t.Logf("%d rounds: %d acknowledged, %d stored (the rest were in flight at the kill)", crashRounds, len(acked), len(recs))
}

// crashRound starts the child hub, sends until crashAcks messages are
// acknowledged, SIGKILLs the child while sending continues, and returns the
// acknowledged message ids.
func crashRound(t *testing.T, dir string, round int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // the child exits when the parent goes
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("child stderr (round %d):\n%s", round, stderr.String())
		}
	}()
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addrCh <- a
			}
		}
		close(addrCh)
		io.Copy(io.Discard, out)
	}()
	var addr string
	select {
	case a, ok := <-addrCh:
		if !ok {
			t.Fatalf("round %d: the child hub did not start", round)
		}
		addr = a
	case <-time.After(30 * time.Second):
		t.Fatalf("round %d: the child hub did not start within 30 s", round)
	}

	token := sas.Sign("localhost/devices/"+crashDevice, decodeKey(t, crashKey), "", time.Now().Add(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqp://"+addr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(crashDevice+"@sas.amqphub", token), HostName: "localhost"})
	if err != nil {
		t.Fatalf("round %d: dial: %v", round, err)
	}
	defer c.Close()
	snd := openSender(t, c, "/devices/"+crashDevice+"/messages/events", nil)

	type inFlight struct {
		id string
		r  goamqp.SendReceipt
	}
	receipts := make(chan inFlight, crashInFlight)
	go func() {
		defer close(receipts)
		body := bytes.Repeat([]byte("x"), 256)
		for i := 0; ; i++ {
			id := fmt.Sprintf("r%d-%d", round, i)
			r, err := snd.SendWithReceipt(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: id}, Data: [][]byte{body}}, nil)
			if err != nil {
				return // the hub is gone
			}
			receipts <- inFlight{id, r}
		}
	}()
	var acked []string
	killed := false
	for f := range receipts {
		st, err := f.r.Wait(ctx)
		if err != nil {
			continue
		}
		if _, ok := st.(*goamqp.StateAccepted); !ok {
			t.Fatalf("round %d: message %s settled with %T %v", round, f.id, st, st)
		}
		acked = append(acked, f.id)
		if !killed && len(acked) >= crashAcks {
			// Kill while the device still has messages in flight.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	if !killed {
		t.Fatalf("round %d: sending stopped after %d acknowledgements: %v", round, len(acked), ctx.Err())
	}
	cmd.Wait()
	return acked
}

// crashChild is the hub process: it serves on a random port until killed
// or until its stdin closes.
func crashChild(dir string) {
	s, err := server.Start(server.Options{
		DataDir:    dir,
		AMQPAddr:   "127.0.0.1:0",
		AMQPSAddr:  "off",
		HTTPSAddr:  "off",
		Partitions: crashPartition,
		Devices:    []server.DeviceConfig{{ID: crashDevice, PrimaryKey: crashKey, SecondaryKey: crashKey}},
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start hub:", err)
		os.Exit(2)
	}
	fmt.Printf("ADDR %s\n", s.AMQPAddr)
	io.Copy(io.Discard, os.Stdin)
	s.Close()
	os.Exit(0)
}
