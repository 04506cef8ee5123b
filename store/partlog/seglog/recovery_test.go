package seglog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"amqphub/store/partlog"
)

// Recovery fixture: 40 records of 124 bytes (100-byte payloads) in 4 KiB
// segments: segment 0 holds 32 records (seq 0..31), segment 1 holds 8.
const (
	fxPayload = 100
	fxRec     = recHeaderSize + fxPayload
	fxRecords = 40
	fxSealed  = 32
)

func fxOptions() Options {
	return Options{Partitions: 1, SegmentSize: MinSegmentSize, IndexInterval: 256}
}

// fxBuild writes the fixture and returns its directory and segment paths.
func fxBuild(t *testing.T) (dir string, segs []string) {
	dir = t.TempDir()
	l := mustOpen(t, dir, fxOptions())
	appendN(t, l, 0, 0, fxRecords, fxPayload)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs = segFiles(t, dir, 0, segSuffix)
	if len(segs) != 2 || fileSize(t, segs[1]) != segHeaderSize+8*fxRec {
		t.Fatalf("fixture layout changed: %v", segs)
	}
	return dir, segs
}

func truncateFile(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, pos int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], pos); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b[:], pos); err != nil {
		t.Fatal(err)
	}
}

// craftRecord encodes one record as the committer would.
func craftRecord(seq, ts int64, payload []byte) []byte {
	b := make([]byte, recHeaderSize+len(payload))
	le.PutUint32(b[4:], uint32(len(payload)))
	copy(b[recHeaderSize:], payload)
	putRecordHeader(b, seq, ts)
	return b
}

// TestRecoverTail damages the tail of the last segment the ways a crash,
// a torn write or a bad disk can, and checks that Open keeps exactly the
// valid prefix and that numbering continues from it.
func TestRecoverTail(t *testing.T) {
	type tc struct {
		name   string
		damage func(t *testing.T, segs []string)
		want   int // records left
	}
	tests := []tc{
		{"intact", func(*testing.T, []string) {}, fxRecords},
		{"garbage appended", func(t *testing.T, s []string) {
			r := rand.New(rand.NewPCG(1, 2))
			g := make([]byte, 500)
			for i := range g {
				g[i] = byte(r.Uint32())
			}
			appendFile(t, s[1], g)
		}, fxRecords},
		{"zeros appended", func(t *testing.T, s []string) { appendFile(t, s[1], make([]byte, 4096)) }, fxRecords},
		{"payload bit flip in record 35", func(t *testing.T, s []string) { flipByte(t, s[1], segHeaderSize+3*fxRec+60) }, 35},
		{"length bit flip in record 35", func(t *testing.T, s []string) { flipByte(t, s[1], segHeaderSize+3*fxRec+5) }, 35},
		{"seq bit flip in record 38", func(t *testing.T, s []string) { flipByte(t, s[1], segHeaderSize+6*fxRec+9) }, 38},
		{"valid record with a wrong seq", func(t *testing.T, s []string) {
			appendFile(t, s[1], craftRecord(999, 1<<41, make([]byte, 10)))
		}, fxRecords},
		{"valid record going back in time", func(t *testing.T, s []string) {
			appendFile(t, s[1], craftRecord(fxRecords, 0, make([]byte, 10)))
		}, fxRecords},
		{"huge length at the tail", func(t *testing.T, s []string) {
			b := craftRecord(fxRecords, 1<<41, nil)
			le.PutUint32(b[4:], 0xFFFFFFF0)
			appendFile(t, s[1], b)
		}, fxRecords},
		{"segment cut inside its header", func(t *testing.T, s []string) { truncateFile(t, s[1], 30) }, fxSealed},
		{"segment cut to nothing", func(t *testing.T, s []string) { truncateFile(t, s[1], 0) }, fxSealed},
		{"segment header damaged", func(t *testing.T, s []string) { flipByte(t, s[1], 20) }, fxRecords},
	}
	for _, k := range []int{0, 1, 4, 7} {
		at := int64(segHeaderSize + k*fxRec)
		tests = append(tests,
			tc{fmt.Sprintf("cut after record %d", fxSealed+k-1), func(t *testing.T, s []string) { truncateFile(t, s[1], at) }, fxSealed + k},
			tc{fmt.Sprintf("cut in header of record %d", fxSealed+k), func(t *testing.T, s []string) { truncateFile(t, s[1], at+10) }, fxSealed + k},
			tc{fmt.Sprintf("cut in payload of record %d", fxSealed+k), func(t *testing.T, s []string) { truncateFile(t, s[1], at+fxRec-1) }, fxSealed + k},
		)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 6 {
		cut := segHeaderSize + r.Int64N(8*fxRec)
		tests = append(tests, tc{fmt.Sprintf("random cut at %d", cut), func(t *testing.T, s []string) { truncateFile(t, s[1], cut) },
			fxSealed + int((cut-segHeaderSize)/fxRec)})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, segs := fxBuild(t)
			tc.damage(t, segs)
			checkRecovered(t, dir, tc.want)
		})
	}
}

// checkRecovered reopens dir and checks that it holds the first want
// fixture records, that the next append continues the numbering, and that
// the repaired log reopens the same.
func checkRecovered(t *testing.T, dir string, want int) {
	t.Helper()
	l := mustOpen(t, dir, fxOptions())
	recs := readAll(t, l, 0)
	if len(recs) != want {
		t.Fatalf("%d records recovered, want %d", len(recs), want)
	}
	checkRecords(t, recs, 0, 0, fxPayload)
	// The damaged tail is cut, not just skipped.
	var data int64
	for _, s := range segFiles(t, dir, 0, segSuffix) {
		data += fileSize(t, s) - segHeaderSize
	}
	if data != int64(want*fxRec) {
		t.Fatalf("segments hold %d bytes of records after recovery, want %d", data, want*fxRec)
	}
	info, err := l.Info(0)
	if err != nil || info.LastSeq != int64(want-1) || info.BeginSeq != 0 {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	e, err := l.Append(context.Background(), 0, payloadFor(uint64(want), fxPayload))
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != int64(want) || e.Offset != int64(want*fxRec) || e.EnqueuedTime < recs[len(recs)-1].EnqueuedTime {
		t.Fatalf("append after recovery = %+v, want seq %d offset %d", e, want, want*fxRec)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = mustOpen(t, dir, fxOptions())
	recs = readAll(t, l, 0)
	if len(recs) != want+1 {
		t.Fatalf("%d records after the second reopen, want %d", len(recs), want+1)
	}
	checkRecords(t, recs, 0, 0, fxPayload)
}

// TestRecoverSealed damages sealed segments and their index files.
func TestRecoverSealed(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir string, segs []string)
		openErr error // Open must fail with it; nil: all records readable
		readErr error // reading the damaged record must fail with it
	}{
		{"index deleted", func(t *testing.T, _ string, s []string) { removeIdx(t, s[0]) }, nil, nil},
		{"index corrupt", func(t *testing.T, _ string, s []string) { flipByte(t, idxOf(s[0]), 50) }, nil, nil},
		{"index truncated", func(t *testing.T, _ string, s []string) { truncateFile(t, idxOf(s[0]), 90) }, nil, nil},
		{"index of another size", func(t *testing.T, _ string, s []string) {
			b, err := os.ReadFile(idxOf(s[0]))
			if err != nil {
				t.Fatal(err)
			}
			sum, reason := decodeIndex(b)
			if reason != "" {
				t.Fatal(reason)
			}
			sum.dataSize -= fxRec
			if err := os.WriteFile(idxOf(s[0]), sum.encodeIndex(), 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, nil},
		{"leftover temporary and orphan files", func(t *testing.T, dir string, _ []string) {
			for _, n := range []string{"00000000000000000099.seg.tmp", "00000000000000000777.idx"} {
				if err := os.WriteFile(filepath.Join(dir, partDir(0), n), []byte("junk"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}, nil, nil},
		{"sealed record damaged, index deleted", func(t *testing.T, _ string, s []string) {
			flipByte(t, s[0], segHeaderSize+5*fxRec+70)
			removeIdx(t, s[0])
		}, partlog.ErrCorrupt, nil},
		{"sealed record damaged, index intact", func(t *testing.T, _ string, s []string) {
			flipByte(t, s[0], segHeaderSize+5*fxRec+70)
		}, nil, partlog.ErrCorrupt},
		{"sealed header damaged, index intact", func(t *testing.T, _ string, s []string) {
			flipByte(t, s[0], 9)
		}, nil, partlog.ErrCorrupt},
		{"sealed segment truncated, index intact", func(t *testing.T, _ string, s []string) {
			truncateFile(t, s[0], segHeaderSize+10*fxRec)
		}, partlog.ErrCorrupt, nil},
		{"sealed segment missing", func(t *testing.T, _ string, s []string) {
			if err := os.Remove(s[0]); err != nil {
				t.Fatal(err)
			}
			removeIdx(t, s[0])
			// What is left starts at seq 32: that is what retention
			// leaves too, so it must open with the older records gone.
		}, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, segs := fxBuild(t)
			tc.damage(t, dir, segs)
			l, err := Open(dir, Options{Partitions: 1, SegmentSize: MinSegmentSize, Logger: testLogger(t)})
			if tc.openErr != nil {
				if !errors.Is(err, tc.openErr) {
					t.Fatalf("Open = %v, want %v", err, tc.openErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer l.Close()
			if tc.readErr != nil {
				_, err := l.Read(0, 0, 100, 0, nil)
				if !errors.Is(err, tc.readErr) {
					t.Fatalf("Read of the damaged segment = %v, want %v", err, tc.readErr)
				}
				recs, err := l.Read(0, fxSealed, 100, 0, nil)
				if err != nil || len(recs) != fxRecords-fxSealed {
					t.Fatalf("Read of the intact segment: %d records, %v", len(recs), err)
				}
				return
			}
			recs := readAll(t, l, 0)
			if len(recs) == 0 {
				t.Fatal("no records")
			}
			checkRecords(t, recs, recs[0].Seq, uint64(recs[0].Seq), fxPayload)
			if last := recs[len(recs)-1].Seq; last != fxRecords-1 {
				t.Fatalf("last seq %d, want %d", last, fxRecords-1)
			}
			// Seeks go through the (possibly rebuilt) index.
			for _, r := range recs {
				if got, err := l.SeekOffset(0, r.Offset); err != nil || got != r.Seq {
					t.Fatalf("SeekOffset(%d) = %d, %v; want %d", r.Offset, got, err, r.Seq)
				}
			}
			if entries, _ := os.ReadDir(filepath.Join(dir, partDir(0))); len(entries) != 2*len(segFiles(t, dir, 0, segSuffix))-1 {
				t.Fatalf("stale files left after Open: %v", entries)
			}
		})
	}
}

// TestMissingMiddleSegment checks that a hole inside the log fails Open.
func TestMissingMiddleSegment(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, fxOptions())
	appendN(t, l, 0, 0, 80, fxPayload)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segFiles(t, dir, 0, segSuffix)
	if len(segs) < 3 {
		t.Fatalf("want 3 segments, have %d", len(segs))
	}
	if err := os.Remove(segs[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, fxOptions()); !errors.Is(err, partlog.ErrCorrupt) {
		t.Fatalf("Open with a missing middle segment = %v, want ErrCorrupt", err)
	}
}

// TestSingleSegmentHeaderDamaged checks that the first segment's header,
// which has nothing before it, is rebuilt too.
func TestSingleSegmentHeaderDamaged(t *testing.T) {
	dir := t.TempDir()
	l := mustOpen(t, dir, fxOptions())
	appendN(t, l, 0, 0, 10, fxPayload)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	seg := segFiles(t, dir, 0, segSuffix)[0]
	flipByte(t, seg, 2)
	checkRecovered(t, dir, 10)
}

func idxOf(seg string) string { return seg[:len(seg)-len(segSuffix)] + idxSuffix }

func removeIdx(t *testing.T, seg string) {
	t.Helper()
	if err := os.Remove(idxOf(seg)); err != nil {
		t.Fatal(err)
	}
}
