package seglog

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

var fuzzHeader = segHeader{baseSeq: 5, baseOffset: 1000, prevOffset: 900, prevTime: 1_700_000_000_000}

// fuzzRecords returns n valid records following fuzzHeader.
func fuzzRecords(n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, craftRecord(fuzzHeader.baseSeq+int64(i), fuzzHeader.prevTime+int64(i/2), bytes.Repeat([]byte{byte(i)}, i*7))...)
	}
	return b
}

// FuzzScanSegment feeds arbitrary bytes after a valid segment header to
// the recovery scanner. It must never panic or report I/O errors, must
// accept exactly a prefix of whole valid records, and must summarise and
// index that prefix consistently.
func FuzzScanSegment(f *testing.F) {
	valid := fuzzRecords(5)
	f.Add(valid, uint16(64))
	f.Add(valid[:len(valid)-3], uint16(100))
	f.Add(append(bytes.Clone(valid), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0), uint16(1))
	f.Add(make([]byte, 48), uint16(64))
	f.Fuzz(func(t *testing.T, data []byte, interval uint16) {
		file := append(fuzzHeader.encode(), data...)
		st := newScanState(fuzzHeader, max(int(interval), 1))
		reason, err := scanSegment(bytes.NewReader(file), int64(len(file)), st)
		if err != nil {
			t.Fatalf("scan of an in-memory file: %v", err)
		}
		sum := st.sum
		if sum.dataSize < segHeaderSize || sum.dataSize > int64(len(file)) {
			t.Fatalf("valid prefix ends at %d of %d", sum.dataSize, len(file))
		}
		if (reason == "") != (sum.dataSize == int64(len(file))) {
			t.Fatalf("reason %q with %d of %d bytes valid", reason, sum.dataSize, len(file))
		}
		// Walk the prefix independently.
		pos, n, prevTime := int64(segHeaderSize), int64(0), fuzzHeader.prevTime
		for pos < sum.dataSize {
			rec, size, res, why := decodeRecord(file[pos:sum.dataSize])
			if res != decOK {
				t.Fatalf("accepted prefix has a bad record at %d: %s", pos, why)
			}
			if rec.seq != fuzzHeader.baseSeq+n || rec.time < prevTime {
				t.Fatalf("accepted record at %d out of order", pos)
			}
			prevTime = rec.time
			pos += int64(size)
			n++
		}
		if pos != sum.dataSize || n != sum.count {
			t.Fatalf("prefix walk found %d records to %d, summary %d to %d", n, pos, sum.count, sum.dataSize)
		}
		// The prefix alone scans clean to the same summary.
		st2 := newScanState(fuzzHeader, max(int(interval), 1))
		if reason, err := scanSegment(bytes.NewReader(file[:sum.dataSize]), sum.dataSize, st2); reason != "" || err != nil || st2.sum.count != sum.count {
			t.Fatalf("rescan of the valid prefix: %q %v, %d records", reason, err, st2.sum.count)
		}
		// Its index survives an encode/decode round trip.
		if sum.count > 0 {
			got, why := decodeIndex(sum.encodeIndex())
			if why != "" || got.count != sum.count || got.dataSize != sum.dataSize || len(got.entries) != len(sum.entries) {
				t.Fatalf("index round trip: %q", why)
			}
		}
	})
}

// FuzzDecodeIndex checks that any bytes decode to an index without
// panicking and that an accepted index encodes back to the same bytes.
func FuzzDecodeIndex(f *testing.F) {
	st := newScanState(fuzzHeader, 64)
	file := append(fuzzHeader.encode(), fuzzRecords(6)...)
	if _, err := scanSegment(bytes.NewReader(file), int64(len(file)), st); err != nil {
		f.Fatal(err)
	}
	idx := st.sum.encodeIndex()
	f.Add(idx)
	f.Add(idx[:len(idx)-1])
	empty := segSummary{hdr: fuzzHeader, dataSize: segHeaderSize}
	f.Add(empty.encodeIndex())
	f.Fuzz(func(t *testing.T, data []byte) {
		sum, reason := decodeIndex(data)
		if reason != "" {
			return
		}
		if got := sum.encodeIndex(); !bytes.Equal(got, data) {
			t.Fatalf("accepted index does not re-encode to its bytes")
		}
	})
}

// FuzzDecodeSegHeader checks the segment header decoder the same way.
func FuzzDecodeSegHeader(f *testing.F) {
	f.Add(fuzzHeader.encode())
	f.Add(segHeader{prevOffset: -1}.encode())
	f.Add([]byte("APLS"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, reason := decodeSegHeader(data)
		if reason != "" {
			return
		}
		if h2, why := decodeSegHeader(h.encode()); why != "" || h2 != h {
			t.Fatalf("accepted header %+v does not round-trip: %q", h, why)
		}
	})
}

// FuzzOpenSegment writes arbitrary bytes as the only segment of a
// partition and opens the log: Open must either fail with an error or
// recover a log that reads back consistently and accepts appends.
func FuzzOpenSegment(f *testing.F) {
	h0 := segHeader{prevOffset: -1}
	var recs []byte
	for i := range 4 {
		recs = append(recs, craftRecord(int64(i), 1_700_000_000_000, bytes.Repeat([]byte{'x'}, i*10))...)
	}
	good := append(h0.encode(), recs...)
	f.Add(good)
	f.Add(good[:len(good)-5])
	f.Add(good[:40])
	f.Add(append(bytes.Clone(good), "garbage"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := memTempDir(t)
		pdir := filepath.Join(dir, "p00")
		if err := os.MkdirAll(pdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, metaName), []byte(`{"format":"amqphub-partlog","version":1,"partitions":1}`), 0o644); err != nil {
			t.Fatal(err)
		}
		seg, _ := segPaths(pdir, 0)
		if err := os.WriteFile(seg, data, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, Options{Partitions: 1, Logger: discardLogger()})
		if err != nil {
			return
		}
		defer l.Close()
		info, err := l.Info(0)
		if err != nil {
			t.Fatal(err)
		}
		got := readAll(t, l, 0)
		if int64(len(got)) != info.LastSeq+1-info.BeginSeq {
			t.Fatalf("read %d records, Info %+v", len(got), info)
		}
		e, err := l.Append(t.Context(), 0, []byte("next"))
		if err != nil || e.Seq != info.LastSeq+1 {
			t.Fatalf("append after recovery: %+v, %v (Info %+v)", e, err, info)
		}
	})
}

// memTempDir is t.TempDir on tmpfs when the machine has /dev/shm: each
// input opens a log and appends, and the fsyncs of that on a busy disk can
// stall one execution for seconds, past a short -fuzztime, which the fuzz
// engine reports as a failure.
func memTempDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err != nil || !fi.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "seglog-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
