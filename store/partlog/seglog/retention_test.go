package seglog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/store/partlog"
)

// TestTimeRetention ages records with a fake clock and checks that whole
// expired segments go (on roll, and at Open), that numbering and offsets
// are not reused, and what Info reports once everything expired.
func TestTimeRetention(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	// A long interval keeps the ticker out of the way: retention runs on
	// roll and at Open here.
	o := Options{Partitions: 1, SegmentSize: MinSegmentSize, Now: clock.Now, RetentionInterval: time.Hour}
	l := mustOpen(t, dir, o)
	const size = 200
	appendN(t, l, 0, 0, 100, size) // day 0: ~6 segments
	clock.Add(12 * time.Hour)
	appendN(t, l, 0, 100, 100, size) // day 0.5
	segsBefore := len(segFiles(t, dir, 0, segSuffix))

	clock.Add(12*time.Hour + time.Millisecond) // day-0 records are now older than a day
	appendN(t, l, 0, 200, 20, size)            // rolls, which enforces retention
	info, _ := l.Info(0)
	if info.BeginSeq == 0 || info.BeginSeq > 100 {
		t.Fatalf("BeginSeq = %d after day-0 records expired, want 1..100", info.BeginSeq)
	}
	segs := segFiles(t, dir, 0, segSuffix)
	if base, _, _ := parseSegName(filepath.Base(segs[0])); base != info.BeginSeq || len(segs) >= segsBefore+1 {
		t.Fatalf("first segment file %s (of %d, %d before), BeginSeq %d", segs[0], len(segs), segsBefore, info.BeginSeq)
	}
	if idx := segFiles(t, dir, 0, idxSuffix); len(idx) != len(segs)-1 {
		t.Fatalf("%d index files for %d segments", len(idx), len(segs))
	}
	recs := readAll(t, l, 0)
	if recs[0].Seq != info.BeginSeq || recs[len(recs)-1].Seq != 219 {
		t.Fatalf("records %d..%d readable, want %d..219", recs[0].Seq, recs[len(recs)-1].Seq, info.BeginSeq)
	}
	checkRecords(t, recs, info.BeginSeq, uint64(info.BeginSeq), size)
	// Positions below the beginning clamp to it.
	if got, _ := l.Read(0, 0, 1, 0, nil); len(got) != 1 || got[0].Seq != info.BeginSeq {
		t.Fatalf("Read from 0 = %+v, want seq %d", got, info.BeginSeq)
	}
	if got, _ := l.SeekOffset(0, 0); got != info.BeginSeq {
		t.Fatalf("SeekOffset(0) = %d, want %d", got, info.BeginSeq)
	}
	if got, _ := l.SeekTime(0, 0); got != info.BeginSeq {
		t.Fatalf("SeekTime(0) = %d, want %d", got, info.BeginSeq)
	}
	last := recs[len(recs)-1]
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Two days later everything has expired; Open enforces retention.
	clock.Add(48 * time.Hour)
	l = mustOpen(t, dir, o)
	info, _ = l.Info(0)
	want := partlog.Info{BeginSeq: 220, LastSeq: 219, LastOffset: last.Offset, LastEnqueuedTime: last.EnqueuedTime, Empty: true}
	if info != want {
		t.Fatalf("Info after full expiry = %+v, want %+v", info, want)
	}
	if got, _ := l.Read(0, 0, 10, 0, nil); len(got) != 0 {
		t.Fatalf("Read after full expiry returned %d records", len(got))
	}
	for _, f := range []func() (int64, error){
		func() (int64, error) { return l.SeekOffset(0, 0) },
		func() (int64, error) { return l.SeekOffset(0, last.Offset) },
		func() (int64, error) { return l.SeekTime(0, 0) },
		func() (int64, error) { return l.SeekTime(0, last.EnqueuedTime) },
	} {
		if got, err := f(); err != nil || got != 220 {
			t.Fatalf("seek after full expiry = %d, %v; want 220", got, err)
		}
	}
	if n := len(segFiles(t, dir, 0, segSuffix)); n != 1 {
		t.Fatalf("%d segment files after full expiry, want 1 (empty)", n)
	}
	e, err := l.Append(context.Background(), 0, payloadFor(220, size))
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != 220 || e.Offset != last.Offset+recHeaderSize+size || e.EnqueuedTime != clock.Now().UnixMilli() {
		t.Fatalf("append after full expiry = %+v", e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The empty segment carries the numbering across another reopen.
	l = mustOpen(t, dir, o)
	if info, _ := l.Info(0); info.BeginSeq != 220 || info.LastSeq != 220 || info.Empty {
		t.Fatalf("Info after reopen = %+v", info)
	}
}

// TestRetentionTicker checks that retention also runs periodically, with
// no append to trigger it.
func TestRetentionTicker(t *testing.T) {
	clock := newFakeClock()
	l := mustOpen(t, t.TempDir(), Options{Partitions: 2, SegmentSize: MinSegmentSize, Now: clock.Now, RetentionInterval: time.Millisecond})
	appendN(t, l, 1, 0, 50, 300)
	clock.Add(25 * time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		info, err := l.Info(1)
		if err != nil {
			t.Fatal(err)
		}
		if info.Empty && info.BeginSeq == 50 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("retention did not run: %+v", info)
		case <-time.After(time.Millisecond):
		}
	}
}

// TestSizeRetention checks the per-partition size cap.
func TestSizeRetention(t *testing.T) {
	dir := t.TempDir()
	const limit = 3 * MinSegmentSize
	l := mustOpen(t, dir, Options{Partitions: 1, SegmentSize: MinSegmentSize, RetentionBytes: limit})
	appendN(t, l, 0, 0, 300, 100)
	var total int64
	for _, s := range segFiles(t, dir, 0, segSuffix) {
		total += fileSize(t, s)
	}
	// The cap is checked on roll: what was sealed at the last roll fits
	// it, and the active segment comes on top.
	if total > limit+MinSegmentSize {
		t.Fatalf("partition holds %d bytes, limit %d plus one segment", total, limit)
	}
	info, _ := l.Info(0)
	if info.BeginSeq == 0 || info.LastSeq != 299 {
		t.Fatalf("Info = %+v", info)
	}
	checkRecords(t, readAll(t, l, 0), info.BeginSeq, uint64(info.BeginSeq), 100)
}

// TestReadWhileRetentionDeletes runs readers from the beginning while
// appends roll segments and retention deletes them under the readers.
// Readers must only ever see intact, consecutive records or clamp forward.
func TestReadWhileRetentionDeletes(t *testing.T) {
	clock := newFakeClock()
	l := mustOpen(t, t.TempDir(), Options{Partitions: 1, SegmentSize: MinSegmentSize, Now: clock.Now, RetentionInterval: time.Millisecond})
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				prev := int64(-1)
				for from := int64(0); ; {
					recs, err := l.Read(0, from, 20, 0, nil)
					if err != nil {
						t.Errorf("Read: %v", err)
						return
					}
					if len(recs) == 0 {
						break
					}
					for _, r := range recs {
						if r.Seq <= prev || len(r.Payload) != 120 || !equalPayload(r.Payload, payloadFor(uint64(r.Seq), 120)) {
							t.Errorf("bad record seq %d after %d", r.Seq, prev)
							return
						}
						prev = r.Seq
					}
					from = prev + 1
				}
			}
		})
	}
	// 200 batches of 10, 10 minutes apart: 144 batches are retained.
	for i := range 200 {
		var done sync.WaitGroup
		done.Add(10)
		for j := range 10 {
			err := l.AppendAsync(0, payloadFor(uint64(i*10+j), 120), func(_ partlog.Entry, err error) {
				if err != nil {
					t.Error(err)
				}
				done.Done()
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		done.Wait()
		clock.Add(10 * time.Minute)
	}
	stop.Store(true)
	wg.Wait()
	info, _ := l.Info(0)
	// 1440 of the 2000 minutes are retained, in whole segments.
	if info.BeginSeq < 500 || info.BeginSeq > 560 {
		t.Fatalf("BeginSeq = %d, want about 560", info.BeginSeq)
	}
}

func equalPayload(a, b []byte) bool { return string(a) == string(b) }

// TestStaleCursorAfterRetention reads the oldest segment through a cursor located before
// retention deleted the (not yet opened) file: the read must report
// errRemoved, which makes Read start again, rather than fail.
func TestStaleCursorAfterRetention(t *testing.T) {
	dir := t.TempDir()
	clock := newFakeClock()
	o := Options{Partitions: 1, SegmentSize: MinSegmentSize, Now: clock.Now, RetentionInterval: time.Millisecond}
	l := mustOpen(t, dir, o)
	appendN(t, l, 0, 0, 100, 200)
	clock.Add(2 * time.Hour)
	appendN(t, l, 0, 100, 20, 200)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, o) // sealed segments are now opened lazily
	p := l.parts[0]
	c, _, err := p.locate(0)
	if err != nil || c.seg == nil || c.seg.f != nil {
		t.Fatalf("locate: %v, %+v", err, c)
	}
	c2, _, _ := p.locate(0)
	clock.Add(23 * time.Hour) // the first 100 records expire
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Retention flags the segment, then unlinks its file: until then a
	// reader still opens it, which is fine but not what this tests.
	gone := func() bool {
		_, err := os.Stat(c.seg.path)
		return c.seg.removed.Load() && errors.Is(err, os.ErrNotExist)
	}
	for !gone() {
		select {
		case <-ctx.Done():
			t.Fatal("retention did not remove the first segment")
		case <-time.After(time.Millisecond):
		}
	}
	if _, err := p.readFrom(c, 0, 10, 0, nil); !errors.Is(err, errRemoved) {
		t.Fatalf("read through a stale cursor = %v, want errRemoved", err)
	}
	if _, err := p.seekIn(c2, func(int64, int64, int64) bool { return true }); !errors.Is(err, errRemoved) {
		t.Fatalf("seek through a stale cursor = %v, want errRemoved", err)
	}
	info, _ := l.Info(0)
	recs, err := l.Read(0, 0, 10, 0, nil)
	if err != nil || len(recs) == 0 || recs[0].Seq != info.BeginSeq {
		t.Fatalf("Read after retention = %d records, %v; BeginSeq %d", len(recs), err, info.BeginSeq)
	}
}
