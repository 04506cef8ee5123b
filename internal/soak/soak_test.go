package soak

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// soakEnv, set to a duration ("30s", "10m"), runs TestSoak for that long
// with a kill every 1-4 s. Without it only the smoke soak runs.
const soakEnv = "AMQPHUB_SOAK"

// serveIfChild turns a re-executed test binary into the hub child.
func serveIfChild(t *testing.T) {
	if ok, err := ServeChild(); ok {
		if err != nil {
			t.Fatal(err)
		}
		os.Exit(0)
	}
}

// TestSoakSmoke kills the hub twice under load and verifies: a short
// run of the real thing, so the soak itself is tested on every CI run.
func TestSoakSmoke(t *testing.T) {
	serveIfChild(t)
	if testing.Short() {
		t.Skip("spawns hub processes")
	}
	rep, err := Run(context.Background(), Config{
		Launch:    SelfLauncher("-test.run=^TestSoakSmoke$"),
		DataDir:   t.TempDir(),
		Cycles:    2,
		MinUptime: 700 * time.Millisecond,
		MaxUptime: 1200 * time.Millisecond,
		Devices:   2,
		Duration:  2 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.Print(&b)
	t.Log(b.String())
	if !rep.OK() {
		t.Fatal("the soak found problems")
	}
	if rep.Cycles != 2 || rep.Starts != 3 {
		t.Fatalf("%d kills and %d starts, want 2 and 3", rep.Cycles, rep.Starts)
	}
	if rep.D2C.Acked == 0 || rep.Twin.Acked == 0 || rep.Registry.Created == 0 || rep.Twin.Checks == 0 {
		t.Fatalf("the load did not run: %+v %+v %+v", rep.D2C, rep.Twin, rep.Registry)
	}
	if rep.D2C.EventHubRead != rep.D2C.Stored {
		t.Fatalf("read %d records through the Event-Hub-compatible endpoint, %d stored", rep.D2C.EventHubRead, rep.D2C.Stored)
	}
}

// TestSoak is the long soak, behind AMQPHUB_SOAK.
func TestSoak(t *testing.T) {
	serveIfChild(t)
	v := os.Getenv(soakEnv)
	if v == "" {
		t.Skip("set " + soakEnv + "=30s (or longer) to run the soak")
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", soakEnv, v, err)
	}
	rep, err := Run(context.Background(), Config{
		Launch:    SelfLauncher("-test.run=^TestSoak$"),
		DataDir:   t.TempDir(),
		Cycles:    1 << 20, // bounded by the duration
		Duration:  d,
		MinUptime: time.Second,
		MaxUptime: 4 * time.Second,
		Progress:  testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	rep.Print(&b)
	t.Log(b.String())
	if !rep.OK() {
		t.Fatal("the soak found problems")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// The verification itself, on made-up histories.

func TestVerifyD2C(t *testing.T) {
	type sent struct {
		id string
		st msgState
	}
	rec := func(seq int64, id string) storedRecord { return storedRecord{Seq: seq, ID: id} }
	tests := []struct {
		name  string
		sent  []sent
		parts [][]storedRecord
		want  D2CReport
	}{
		{"clean", []sent{{"a#0", stAcked}, {"a#1", stAcked}, {"b#0", stAcked}},
			[][]storedRecord{{rec(0, "a#0"), rec(1, "a#1")}, {rec(0, "b#0")}},
			D2CReport{Sent: 3, Acked: 3, Stored: 3}},
		{"in flight at the kill: stored or not, both fine", []sent{{"a#0", stAcked}, {"a#1", stSent}, {"a#2", stSent}},
			[][]storedRecord{{rec(0, "a#0"), rec(1, "a#1")}},
			D2CReport{Sent: 3, Acked: 1, Unknown: 2, Stored: 2, StoredUnacked: 1}},
		{"acknowledged but lost", []sent{{"a#0", stAcked}, {"a#1", stAcked}},
			[][]storedRecord{{rec(0, "a#0")}},
			D2CReport{Sent: 2, Acked: 2, Stored: 1, Lost: 1}},
		{"duplicated", []sent{{"a#0", stAcked}, {"a#1", stSent}},
			[][]storedRecord{{rec(0, "a#0"), rec(1, "a#1"), rec(2, "a#1")}},
			D2CReport{Sent: 2, Acked: 1, Unknown: 1, Stored: 3, StoredUnacked: 1, Duplicated: 1}},
		{"sequence gap", []sent{{"a#0", stAcked}, {"a#1", stAcked}},
			[][]storedRecord{{rec(0, "a#0"), rec(2, "a#1")}},
			D2CReport{Sent: 2, Acked: 2, Stored: 2, SeqGaps: 1}},
		{"out of order", []sent{{"a#0", stAcked}, {"a#1", stAcked}},
			[][]storedRecord{{rec(0, "a#1"), rec(1, "a#0")}},
			D2CReport{Sent: 2, Acked: 2, Stored: 2, OutOfOrder: 1}},
		{"rejected yet stored, and never sent", []sent{{"a#0", stRejected}},
			[][]storedRecord{{rec(0, "a#0"), rec(1, "zz#9")}},
			D2CReport{Sent: 1, Rejected: 1, Stored: 2, Phantom: 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedger()
			for _, s := range tc.sent {
				l.markSent(s.id)
				if s.st != stSent {
					l.mark(s.id, s.st)
				}
			}
			var p problems
			got := verifyD2C(l, tc.parts, &p)
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			bad := got.Lost + got.Duplicated + got.Phantom + got.SeqGaps + got.OutOfOrder
			if (bad == 0) != (p.total == 0) {
				t.Fatalf("%d problems reported for %d failures: %v", p.total, bad, p.list)
			}
		})
	}
}

func TestLedgerOutcomeIsFinal(t *testing.T) {
	l := newLedger()
	l.markSent("a#0")
	l.mark("a#0", stAcked)
	l.mark("a#0", stRejected) // a late, contradictory outcome is ignored
	if s, a, r := l.counts(); s != 1 || a != 1 || r != 0 {
		t.Fatalf("counts %d %d %d", s, a, r)
	}
}

func TestCompareEventHub(t *testing.T) {
	log := [][]storedRecord{{{0, "a#0"}, {1, "a#1"}}, nil}
	tests := []struct {
		name     string
		eh       [][]storedRecord
		mismatch int64
	}{
		{"same", [][]storedRecord{{{0, "a#0"}, {1, "a#1"}}, nil}, 0},
		{"short", [][]storedRecord{{{0, "a#0"}}, nil}, 1},
		{"other record", [][]storedRecord{{{0, "a#0"}, {1, "a#2"}}, nil}, 1},
		{"missing partition", [][]storedRecord{{{0, "a#0"}, {1, "a#1"}}}, 0},
	}
	for _, tc := range tests {
		var p problems
		if _, got := compareEventHub(log, tc.eh, &p); got != tc.mismatch {
			t.Errorf("%s: %d mismatches, want %d", tc.name, got, tc.mismatch)
		}
	}
}

func TestCheckTwin(t *testing.T) {
	tl := newTwinLedger()
	tl.acked["d"], tl.attempted["d"], tl.version["d"] = 5, 7, 10
	tw := func(n, v int64) twin {
		var x twin
		x.Tags.Soak.N, x.Properties.Desired.SoakN, x.Version = n, n, v
		return x
	}
	tests := []struct {
		name      string
		tw        twin
		lost, bad int64
	}{
		{"last acknowledged", tw(5, 10), 0, 0},
		{"an unacknowledged update landed", tw(7, 12), 0, 0},
		{"acknowledged update lost", tw(4, 10), 2, 0},
		{"never written", tw(8, 12), 0, 2},
		{"version went back", tw(6, 9), 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tl.version["d"] = 10
			var r TwinReport
			var p problems
			tl.checkTwin("d", tc.tw, &r, &p)
			if r.Lost != tc.lost || r.Bad != tc.bad {
				t.Fatalf("lost %d bad %d, want %d %d (%v)", r.Lost, r.Bad, tc.lost, tc.bad, p.list)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []Config{
		{},
		{Launch: SelfLauncher()},
		{Launch: SelfLauncher(), DataDir: "x", Devices: -1},
		{Launch: SelfLauncher(), DataDir: "x", MinUptime: 2 * time.Second, MaxUptime: time.Second},
		{Launch: SelfLauncher(), DataDir: "x", Partitions: 33},
	}
	for i, c := range tests {
		if _, err := Run(context.Background(), c); err == nil {
			t.Errorf("config %d accepted", i)
		}
	}
}
