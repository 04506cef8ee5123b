package loadgen

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestRecorderPercentiles(t *testing.T) {
	rs := recordersFor(3)
	// 1..10000 µs spread over three recorders: percentiles of a uniform
	// distribution, within the histogram's 0.1% resolution.
	for i := 1; i <= 10000; i++ {
		rs[i%3].record(time.Duration(i) * time.Microsecond)
	}
	rs[0].record(-time.Second)   // a clock step counts as the minimum
	rs[1].record(time.Hour * 10) // beyond the range counts as the maximum
	l := summarize(merged(rs))
	if l.Count != 10002 {
		t.Fatalf("count %d, want 10002", l.Count)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p50", l.P50Ms, 5.0}, {"p90", l.P90Ms, 9.0}, {"p99", l.P99Ms, 9.9}, {"max", l.MaxMs, float64(histMaxUS) / 1000},
	} {
		if math.Abs(c.got-c.want) > c.want*0.002 {
			t.Errorf("%s = %v ms, want %v ms", c.name, c.got, c.want)
		}
	}
	if summarize(merged(recordersFor(1))) != nil {
		t.Error("an empty histogram summarized to a latency")
	}
}

func TestReportFormats(t *testing.T) {
	r := &Report{
		Scenario: "d2c", Target: "amqp://x (iothub)", Connections: 4, MessageSize: 256, InFlight: 256,
		Seconds: 2, Sent: 10, Accepted: 10, MsgsPerSec: 5, MBPerSec: 0.00128,
		Latency: &Latency{Count: 10, P50Ms: 1.5, P99Ms: 120, MaxMs: 130},
		Errors:  []string{"boom"},
	}
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"d2c against amqp://x (iothub)", "unbounded, 256 in flight", "ack latency", "p50 1.50 ms", "p99 120 ms", "error", "boom"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Accepted != 10 || back.Latency == nil || back.Latency.P99Ms != 120 {
		t.Fatalf("JSON round trip lost data: %s", js.String())
	}
}

func TestErrorSetKeepsFirstDistinct(t *testing.T) {
	var e errorSet
	for i := 0; i < 20; i++ {
		e.add(errRejectedf(i % 7))
	}
	e.add(nil)
	got := e.all()
	if len(got) != 5 || got[0] != "rejected: 0" || got[4] != "rejected: 4" {
		t.Fatalf("errors %q", got)
	}
}

func errRejectedf(i int) error { return &errRejected{desc: string(rune('0' + i))} }

func TestParseMemStats(t *testing.T) {
	in := "heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# Alloc = 10\n# HeapAlloc = 123456\n# Stack = 65536 / 65536\n"
	heap, stack, err := parseMemStats(strings.NewReader(in))
	if err != nil || heap != 123456 || stack != 65536 {
		t.Fatalf("heap %d, stack %d, err %v", heap, stack, err)
	}
	for _, bad := range []string{"", "# HeapAlloc = 1\n", "# HeapAlloc = x\n# Stack = 1 / 1\n"} {
		if _, _, err := parseMemStats(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
