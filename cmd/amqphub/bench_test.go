package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"amqphub/internal/loadgen"
)

// TestBenchD2CInProcess runs the whole command: an in-process hub with a
// temporary data directory, a short d2c run, the JSON report.
func TestBenchD2CInProcess(t *testing.T) {
	for _, client := range []string{"raw", "go-amqp"} {
		t.Run(client, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := benchCmd([]string{"d2c", "--duration", "300ms", "--connections", "2", "--client", client, "--tls", "--json"}, &out, &errOut)
			if err != nil {
				t.Fatalf("%v\n%s", err, errOut.String())
			}
			var rep loadgen.Report
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("%v: %s", err, out.String())
			}
			if rep.Sent == 0 || rep.Accepted != rep.Sent || !rep.TLS || rep.Client != client || !strings.HasPrefix(rep.Target, "in-process") {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

func TestBenchFlagErrors(t *testing.T) {
	tests := [][]string{
		{},
		{"warp"},
		{"d2c", "--generic"},
		{"d2c", "--generic", "--amqp-url", "http://x", "--address", "q"},
		{"d2c", "--source-ips", "127.0.0.9-127.0.0.2"},
		{"d2c", "--source-ips", "banana"},
		{"d2c", "extra"},
		{"d2c", "--hub", "not a connection string"},
	}
	for _, args := range tests {
		var out, errOut bytes.Buffer
		if err := benchCmd(args, &out, &errOut); err == nil {
			t.Errorf("bench %q: no error", args)
		}
	}
}

func TestParseSources(t *testing.T) {
	got, err := parseSources("127.0.0.2-127.0.0.4, 10.1.1.1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "10.1.1.1"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i, w := range want {
		if got[i] != netip.MustParseAddr(w) {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	if _, err := parseSources("127.0.0.1-127.0.255.255"); err == nil {
		t.Error("a range of 65k addresses was accepted")
	}
}
