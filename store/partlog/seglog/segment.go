package seglog

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"amqphub/store/partlog"
)

// segment is one segment file of a partition.
//
// The fields below hdr are guarded by partition.smu. Only the partition's
// committer writes them, and only while the segment is active; once sealed
// they never change.
type segment struct {
	path    string
	idxPath string
	hdr     segHeader
	open    openFunc

	count     int64 // records
	size      int64 // durable bytes, header included
	lastPos   int64 // position of the last record (valid if count > 0)
	firstTime int64
	lastTime  int64
	entries   []indexEntry // sparse index; entries[0] is the first record

	// refs counts the partition's list (1 while listed) plus readers that
	// are using the file; the file is closed when it drops to 0, so
	// retention can delete a segment while a reader is still in it.
	refs atomic.Int32
	// removed is set by retention before it deletes the files.
	removed atomic.Bool

	fmu sync.Mutex
	f   segFile // opened lazily for sealed segments found at Open

	// hints remember where recent reads and seeks stopped, as
	// relSeq<<32 | pos (0 = empty, as no record is at position 0), so
	// that a sequential reader's next Read starts at its exact position
	// instead of the index entry before it.
	hints    [8]atomic.Uint64
	hintNext atomic.Uint32
}

func segPaths(dir string, baseSeq int64) (seg, idx string) {
	name := fmt.Sprintf("%020d", baseSeq)
	return filepath.Join(dir, name+segSuffix), filepath.Join(dir, name+idxSuffix)
}

func newSegment(dir string, sum *segSummary, f segFile, open openFunc) *segment {
	s := &segment{
		hdr:       sum.hdr,
		open:      open,
		count:     sum.count,
		size:      sum.dataSize,
		lastPos:   sum.lastPos,
		firstTime: sum.firstTime,
		lastTime:  sum.lastTime,
		entries:   sum.entries,
		f:         f,
	}
	s.path, s.idxPath = segPaths(dir, sum.hdr.baseSeq)
	s.refs.Store(1)
	return s
}

// summary snapshots the segment for its index file. Caller holds smu or is
// the committer.
func (s *segment) summary() segSummary {
	return segSummary{
		hdr:       s.hdr,
		count:     s.count,
		dataSize:  s.size,
		lastPos:   s.lastPos,
		firstTime: s.firstTime,
		lastTime:  s.lastTime,
		entries:   s.entries,
	}
}

func (s *segment) endSeq() int64 { return s.hdr.baseSeq + s.count }

// endOffset is the offset just past the last record.
func (s *segment) endOffset() int64 { return s.hdr.baseOffset + s.size - segHeaderSize }

func (s *segment) acquire() { s.refs.Add(1) }

func (s *segment) release() {
	if s.refs.Add(-1) != 0 {
		return
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
}

// file returns the segment's file, opening it on first use. The caller
// holds a reference.
func (s *segment) file() (segFile, error) {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f != nil {
		return s.f, nil
	}
	f, err := s.open(s.path, os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("seglog: open segment: %w", err)
	}
	var b [segHeaderSize]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("seglog: read segment header %s: %w", s.path, err)
	}
	h, reason := decodeSegHeader(b[:])
	if reason == "" && h != s.hdr {
		reason = "segment header does not match its index"
	}
	if reason != "" {
		_ = f.Close()
		return nil, &partlog.CorruptError{Path: s.path, Reason: reason}
	}
	s.f = f
	return f, nil
}

// seqEntry returns the index entry with the largest sequence number <= seq.
// Caller holds smu; seq is within the segment.
func (s *segment) seqEntry(seq int64) indexEntry {
	rel := seq - s.hdr.baseSeq
	i := sort.Search(len(s.entries), func(i int) bool { return int64(s.entries[i].relSeq) > rel })
	return s.entries[max(i-1, 0)]
}

// posEntry returns the index entry with the largest position <= pos.
func (s *segment) posEntry(pos int64) indexEntry {
	i := sort.Search(len(s.entries), func(i int) bool { return int64(s.entries[i].pos) > pos })
	return s.entries[max(i-1, 0)]
}

// timeEntry returns the last index entry whose time is < t, and false if
// even the first record's time is >= t.
func (s *segment) timeEntry(t int64) (indexEntry, bool) {
	i := sort.Search(len(s.entries), func(i int) bool { return s.entries[i].time >= t })
	if i == 0 {
		return indexEntry{}, false
	}
	return s.entries[i-1], true
}

// addHint remembers that record seq is at pos (seq may be endSeq: the
// position where the next record will be written).
func (s *segment) addHint(seq, pos int64) {
	i := s.hintNext.Add(1) % uint32(len(s.hints))
	s.hints[i].Store(uint64(seq-s.hdr.baseSeq)<<32 | uint64(pos))
}

// hintEntry returns the closest position at or before seq known from the
// hints, or e if that is closer.
func (s *segment) hintEntry(seq int64, e indexEntry) indexEntry {
	rel := uint32(seq - s.hdr.baseSeq)
	for i := range s.hints {
		v := s.hints[i].Load()
		if v == 0 {
			continue
		}
		if hrel := uint32(v >> 32); hrel <= rel && hrel > e.relSeq {
			e = indexEntry{relSeq: hrel, pos: uint32(v)}
		}
	}
	return e
}
