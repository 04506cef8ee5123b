package seglog

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"amqphub/store/partlog"
)

// testLogger sends the log's messages to the test output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// payloadFor returns the deterministic payload of key.
func payloadFor(key uint64, size int) []byte {
	b := make([]byte, max(size, 8))
	binary.LittleEndian.PutUint64(b, key)
	for i := 8; i < len(b); i++ {
		b[i] = byte(key>>3) ^ byte(i*13)
	}
	return b
}

func mustOpen(t testing.TB, dir string, o Options) *Log {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	l, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// appendN appends n payloads made from keys first..first+n-1 and returns
// their entries.
func appendN(t testing.TB, l *Log, p int, first uint64, n, size int) []partlog.Entry {
	t.Helper()
	es := make([]partlog.Entry, 0, n)
	for i := range uint64(n) {
		e, err := l.Append(context.Background(), p, payloadFor(first+i, size))
		if err != nil {
			t.Fatalf("Append key %d: %v", first+i, err)
		}
		es = append(es, e)
	}
	return es
}

// readAll reads a whole partition from its beginning.
func readAll(t testing.TB, l *Log, p int) []partlog.Record {
	t.Helper()
	var out []partlog.Record
	from := int64(0)
	for {
		n := len(out)
		var err error
		out, err = l.Read(p, from, 500, 0, out)
		if err != nil {
			t.Fatalf("Read(%d, %d): %v", p, from, err)
		}
		if len(out) == n {
			return out
		}
		from = out[len(out)-1].Seq + 1
	}
}

// checkRecords verifies that recs are consecutive from firstSeq and carry
// the payloads of keys firstKey, firstKey+1, ...
func checkRecords(t testing.TB, recs []partlog.Record, firstSeq int64, firstKey uint64, size int) {
	t.Helper()
	for i, r := range recs {
		if r.Seq != firstSeq+int64(i) {
			t.Fatalf("record %d has seq %d, want %d", i, r.Seq, firstSeq+int64(i))
		}
		if want := payloadFor(firstKey+uint64(i), size); !bytes.Equal(r.Payload, want) {
			t.Fatalf("seq %d: payload of key %d, want key %d", r.Seq, binary.LittleEndian.Uint64(r.Payload), firstKey+uint64(i))
		}
		if i > 0 && (r.Offset <= recs[i-1].Offset || r.EnqueuedTime < recs[i-1].EnqueuedTime) {
			t.Fatalf("seq %d breaks offset or time order", r.Seq)
		}
	}
}

// segFiles lists a partition's files with the given suffix, sorted.
func segFiles(t testing.TB, dir string, p int, suffix string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, partDir(p), "*"+suffix))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func partDir(p int) string { return "p" + string(rune('0'+p/10)) + string(rune('0'+p%10)) }

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
