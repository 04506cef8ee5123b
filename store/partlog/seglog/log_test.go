package seglog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"amqphub/store/partlog"
)

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		o    Options
	}{
		{"too many partitions", Options{Partitions: 33}},
		{"negative partitions", Options{Partitions: -1}},
		{"segment too small", Options{Partitions: 1, SegmentSize: 100}},
		{"segment too large", Options{Partitions: 1, SegmentSize: 2 << 30}},
		{"negative window", Options{Partitions: 1, BatchWindow: -time.Millisecond}},
		{"window too long", Options{Partitions: 1, BatchWindow: 2 * time.Second}},
		{"queue too small", Options{Partitions: 1, MaxQueueBytes: 10}},
		{"payload limit above format", Options{Partitions: 1, MaxPayload: 65 << 20}},
		{"retention below a day", Options{Partitions: 1, Retention: time.Hour}},
		{"retention above a week", Options{Partitions: 1, Retention: 8 * 24 * time.Hour}},
		{"negative retention bytes", Options{Partitions: 1, RetentionBytes: -1}},
		{"negative retention interval", Options{Partitions: 1, RetentionInterval: -time.Second}},
		{"tiny index interval", Options{Partitions: 1, IndexInterval: 8}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if l, err := Open(dir, tc.o); err == nil {
				l.Close()
				t.Fatal("Open accepted invalid options")
			}
		})
	}
}

func TestMetadata(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "Partitions") {
		t.Fatalf("new log without a partition count: %v", err)
	}
	l := mustOpen(t, dir, Options{Partitions: 3})
	if _, err := Open(dir, Options{Partitions: 3}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open of an open log = %v, want ErrLocked", err)
	}
	appendN(t, l, 2, 0, 5, 10)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Partitions: 4}); !errors.Is(err, partlog.ErrPartitionCountMismatch) {
		t.Fatalf("reopen with another count = %v, want ErrPartitionCountMismatch", err)
	}
	l = mustOpen(t, dir, Options{})
	if l.Partitions() != 3 {
		t.Fatalf("reopen with count 0 has %d partitions, want the stored 3", l.Partitions())
	}
	if info, _ := l.Info(2); info.LastSeq != 4 {
		t.Fatalf("Info(2) after reopen = %+v", info)
	}
	l.Close()

	if err := os.WriteFile(filepath.Join(dir, metaName), []byte(`{"format":"x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Partitions: 3}); err == nil {
		t.Fatal("Open accepted foreign metadata")
	}
	if err := os.Remove(filepath.Join(dir, metaName)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{Partitions: 3}); err == nil {
		t.Fatal("Open accepted partition data without metadata")
	}
}

func TestPayloadTooLarge(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{Partitions: 1, MaxPayload: 1000})
	if err := l.AppendAsync(0, make([]byte, 1001), nil); !errors.Is(err, partlog.ErrPayloadTooLarge) {
		t.Fatalf("AppendAsync = %v, want ErrPayloadTooLarge", err)
	}
	if _, err := l.Append(context.Background(), 0, make([]byte, 1001)); !errors.Is(err, partlog.ErrPayloadTooLarge) {
		t.Fatalf("Append = %v, want ErrPayloadTooLarge", err)
	}
	if _, err := l.Append(context.Background(), 0, make([]byte, 1000)); err != nil {
		t.Fatalf("Append at the limit: %v", err)
	}
}

// TestReopen checks that everything survives a clean close and reopen:
// records, entries, Info, seeks through saved indexes, and numbering,
// offsets and (with the clock stepped back) enqueued times going on.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	o := Options{Partitions: 2, SegmentSize: 8 << 10, IndexInterval: 512, Now: clock.Now}
	l := mustOpen(t, dir, o)
	var before [2][]partlog.Record
	for i := range 300 {
		appendN(t, l, i%2, uint64(i), 1, 50+i%200)
		if i%10 == 0 {
			clock.Add(time.Millisecond)
		}
	}
	var infos [2]partlog.Info
	for p := range 2 {
		before[p] = readAll(t, l, p)
		infos[p], _ = l.Info(p)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(segFiles(t, dir, 0, segSuffix)); n < 3 {
		t.Fatalf("want several segments, have %d", n)
	}

	clock.Add(-time.Hour) // the wall clock steps back across the restart
	l = mustOpen(t, dir, o)
	for p := range 2 {
		if info, _ := l.Info(p); info != infos[p] {
			t.Fatalf("Info(%d) after reopen = %+v, want %+v", p, info, infos[p])
		}
		after := readAll(t, l, p)
		if len(after) != len(before[p]) {
			t.Fatalf("partition %d: %d records after reopen, want %d", p, len(after), len(before[p]))
		}
		for i := range after {
			if after[i].Entry != before[p][i].Entry || string(after[i].Payload) != string(before[p][i].Payload) {
				t.Fatalf("partition %d record %d differs after reopen", p, i)
			}
		}
		for _, r := range before[p] {
			if got, err := l.SeekOffset(p, r.Offset); err != nil || got != r.Seq {
				t.Fatalf("SeekOffset(%d) = %d, %v; want %d", r.Offset, got, err, r.Seq)
			}
			got, err := l.SeekTime(p, r.EnqueuedTime)
			if err != nil || got > r.Seq || before[p][got].EnqueuedTime != r.EnqueuedTime {
				t.Fatalf("SeekTime(%d) = %d, %v for seq %d", r.EnqueuedTime, got, err, r.Seq)
			}
		}
		e, err := l.Append(context.Background(), p, []byte("after reopen"))
		if err != nil {
			t.Fatal(err)
		}
		last := before[p][len(before[p])-1]
		if e.Seq != last.Seq+1 || e.Offset != last.Offset+int64(recHeaderSize+len(last.Payload)) || e.EnqueuedTime != last.EnqueuedTime {
			t.Fatalf("append after reopen = %+v, last before = %+v (time must not go back)", e, last.Entry)
		}
	}
}

// TestSequentialReadAcrossSegments reads a partition of many small
// segments in small steps, as a catching-up Event Hubs reader does.
func TestSequentialReadAcrossSegments(t *testing.T) {
	l := mustOpen(t, t.TempDir(), Options{Partitions: 1, SegmentSize: MinSegmentSize, IndexInterval: 1024})
	const n = 500
	appendN(t, l, 0, 0, n, 77)
	next := int64(0)
	for _, step := range []int{1, 3, 7, 64} {
		next = 0
		var got []partlog.Record
		for next < n {
			recs, err := l.Read(0, next, step, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) == 0 || len(recs) > step {
				t.Fatalf("step %d from %d: %d records", step, next, len(recs))
			}
			got = append(got, recs...)
			next = recs[len(recs)-1].Seq + 1
		}
		checkRecords(t, got, 0, 0, 77)
	}
}
