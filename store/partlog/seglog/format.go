package seglog

// On-disk format. All integers are little-endian.
//
// Segment file "<baseSeq:020d>.seg":
//
//	header (64 bytes, written once, before any record, by create-temp + fsync + rename):
//	  0  magic "APLS"
//	  4  version u16, flags u16 (0)
//	  8  baseSeq i64     sequence number of the segment's first record
//	 16  baseOffset i64  offset of the segment's first record
//	 24  prevOffset i64  offset of the record before baseSeq, -1 if none
//	 32  prevTime i64    enqueued time (Unix ms) of that record, 0 if none
//	 40  reserved (20 bytes of zero)
//	 60  crc32c of bytes 0..59
//	records, back to back:
//	  0  crc32c u32 of bytes 4..end of record
//	  4  payload length u32
//	  8  seq i64
//	 16  enqueued time i64 (Unix ms)
//	 24  payload
//
// A record's offset is baseOffset + (position in file - 64): the partition's
// logical stream is the concatenation of all records, headers included, so
// offsets are byte positions and strictly increase.
//
// Index file "<baseSeq:020d>.idx", written when a segment is sealed; it
// lets Open skip scanning sealed segments. It is a cache: when missing,
// corrupt or inconsistent with the segment it is rebuilt by a scan.
//
//	  0  magic "APLI"
//	  4  version u16, reserved u16
//	  8  baseSeq, baseOffset, prevOffset, prevTime (as in the segment header)
//	 40  count i64       records in the segment
//	 48  dataSize i64    segment file size
//	 56  lastPos i64     file position of the last record
//	 64  firstTime i64, lastTime i64
//	 80  n u32           number of entries
//	 84  n × {relSeq u32, pos u32, time i64}
//	     crc32c u32 of everything before it

import (
	"encoding/binary"
	"hash/crc32"
	"io"
)

const (
	segHeaderSize = 64
	recHeaderSize = 24
	formatVersion = 1

	// maxRecordPayload is the format's hard limit. The scanner treats a
	// larger length as corruption, whatever Options.MaxPayload says, so a
	// garbage length can never make it allocate or read gigabytes.
	maxRecordPayload = 64 << 20

	idxFixedSize = 84
	idxEntrySize = 16

	segSuffix = ".seg"
	idxSuffix = ".idx"
	tmpSuffix = ".tmp"
)

var (
	segMagic = [4]byte{'A', 'P', 'L', 'S'}
	idxMagic = [4]byte{'A', 'P', 'L', 'I'}
	castagno = crc32.MakeTable(crc32.Castagnoli)
)

var le = binary.LittleEndian

// segHeader is the immutable state a segment starts from.
type segHeader struct {
	baseSeq    int64
	baseOffset int64
	prevOffset int64
	prevTime   int64
}

func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic[:])
	le.PutUint16(b[4:], formatVersion)
	le.PutUint64(b[8:], uint64(h.baseSeq))
	le.PutUint64(b[16:], uint64(h.baseOffset))
	le.PutUint64(b[24:], uint64(h.prevOffset))
	le.PutUint64(b[32:], uint64(h.prevTime))
	le.PutUint32(b[60:], crc32.Checksum(b[:60], castagno))
	return b
}

// decodeSegHeader returns "" and the header, or a reason it is invalid.
func decodeSegHeader(b []byte) (segHeader, string) {
	if len(b) < segHeaderSize {
		return segHeader{}, "short segment header"
	}
	if [4]byte(b[:4]) != segMagic {
		return segHeader{}, "bad segment magic"
	}
	if crc32.Checksum(b[:60], castagno) != le.Uint32(b[60:]) {
		return segHeader{}, "segment header checksum mismatch"
	}
	if v := le.Uint16(b[4:]); v != formatVersion {
		return segHeader{}, "unsupported segment version"
	}
	h := segHeader{
		baseSeq:    int64(le.Uint64(b[8:])),
		baseOffset: int64(le.Uint64(b[16:])),
		prevOffset: int64(le.Uint64(b[24:])),
		prevTime:   int64(le.Uint64(b[32:])),
	}
	if h.baseSeq < 0 || h.baseOffset < 0 || h.prevOffset < -1 || h.prevOffset >= h.baseOffset && h.prevOffset != -1 {
		return segHeader{}, "segment header out of range"
	}
	return h, ""
}

// putRecordHeader fills the header of the record at b[0:], whose payload
// length is already in place, and checksums it.
func putRecordHeader(b []byte, seq, t int64) {
	le.PutUint64(b[8:], uint64(seq))
	le.PutUint64(b[16:], uint64(t))
	n := le.Uint32(b[4:])
	le.PutUint32(b[0:], crc32.Checksum(b[4:recHeaderSize+int(n)], castagno))
}

// recView is a decoded record; payload aliases the decoded buffer.
type recView struct {
	seq     int64
	time    int64
	payload []byte
}

// Results of decodeRecord besides success.
const (
	decOK = iota
	decShort
	decBad
)

// decodeRecord decodes the record at the start of b. It returns decShort
// with the record's total size (or recHeaderSize if even the header is
// incomplete) when b is too short, decBad with a reason when the bytes can
// never be a valid record, and decOK with the record and its total size.
func decodeRecord(b []byte) (recView, int, int, string) {
	if len(b) < recHeaderSize {
		return recView{}, recHeaderSize, decShort, ""
	}
	n := le.Uint32(b[4:])
	if n > maxRecordPayload {
		return recView{}, 0, decBad, "record length out of range"
	}
	size := recHeaderSize + int(n)
	if len(b) < size {
		return recView{}, size, decShort, ""
	}
	if crc32.Checksum(b[4:size], castagno) != le.Uint32(b) {
		return recView{}, size, decBad, "record checksum mismatch"
	}
	return recView{
		seq:     int64(le.Uint64(b[8:])),
		time:    int64(le.Uint64(b[16:])),
		payload: b[recHeaderSize:size:size],
	}, size, decOK, ""
}

// indexEntry locates one record of a segment.
type indexEntry struct {
	relSeq uint32 // seq - baseSeq
	pos    uint32 // file position
	time   int64  // enqueued time
}

// segSummary is what a scan of a segment (or its index file) yields.
type segSummary struct {
	hdr       segHeader
	count     int64
	dataSize  int64 // file position just past the last valid record
	lastPos   int64
	firstTime int64
	lastTime  int64
	entries   []indexEntry
}

// lastOffset is the offset of the segment's last record, or the header's
// prevOffset if it has none.
func (s *segSummary) lastOffset() int64 {
	if s.count == 0 {
		return s.hdr.prevOffset
	}
	return s.hdr.baseOffset + s.lastPos - segHeaderSize
}

// lastTimeOr is the enqueued time of the segment's last record, or the
// header's prevTime if it has none.
func (s *segSummary) lastTimeOr() int64 {
	if s.count == 0 {
		return s.hdr.prevTime
	}
	return s.lastTime
}

// scanState accumulates a scan; the committer keeps using it for the active
// segment so that index placement is the same whether a segment was written
// in one run or recovered.
type scanState struct {
	sum          segSummary
	interval     int64
	lastIndexPos int64
}

func newScanState(h segHeader, interval int) *scanState {
	return &scanState{
		sum:      segSummary{hdr: h, dataSize: segHeaderSize},
		interval: int64(interval),
	}
}

// wantIndex reports whether a record at pos gets an index entry: the first
// record of a segment always does, then one every interval bytes.
func (st *scanState) wantIndex(pos int64) bool {
	return st.sum.count == 0 || pos-st.lastIndexPos >= st.interval
}

// add records a valid record at pos, of total size size.
func (st *scanState) add(pos int64, size int, t int64) {
	if st.wantIndex(pos) {
		st.sum.entries = append(st.sum.entries, indexEntry{
			relSeq: uint32(st.sum.count),
			pos:    uint32(pos),
			time:   t,
		})
		st.lastIndexPos = pos
	}
	if st.sum.count == 0 {
		st.sum.firstTime = t
	}
	st.sum.count++
	st.sum.lastPos = pos
	st.sum.lastTime = t
	st.sum.dataSize = pos + int64(size)
}

// scanChunk is the read size of the segment scanner.
const scanChunk = 1 << 20

// scanSegment reads the records of a segment of the given size after its
// header, validating framing, checksums, consecutive sequence numbers and
// non-decreasing times. It stops at the first record that is torn or
// invalid: st.sum.dataSize is then the end of the valid prefix and the
// returned reason says why the rest was rejected ("" if the whole file is
// valid). An error is returned only for I/O failures.
func scanSegment(r io.ReaderAt, size int64, st *scanState) (string, error) {
	buf := make([]byte, min(size, scanChunk))
	pos := int64(segHeaderSize)
	bufPos, bufLen := int64(0), 0 // buf[:bufLen] holds the file at bufPos
	prevTime := st.sum.hdr.prevTime
	for pos < size {
		rel := int(pos - bufPos)
		if bufLen == 0 || rel+recHeaderSize > bufLen {
			if err := fill(r, &buf, &bufPos, &bufLen, pos, recHeaderSize, size); err != nil {
				return "", err
			}
			rel = 0
		}
		if bufLen-rel < recHeaderSize {
			return "torn record header", nil
		}
		n := le.Uint32(buf[rel+4:])
		if n > maxRecordPayload {
			return "record length out of range", nil
		}
		recSize := recHeaderSize + int(n)
		if pos+int64(recSize) > size {
			return "torn record", nil
		}
		if rel+recSize > bufLen {
			if err := fill(r, &buf, &bufPos, &bufLen, pos, recSize, size); err != nil {
				return "", err
			}
			rel = 0
		}
		rec, _, res, reason := decodeRecord(buf[rel:bufLen])
		if res != decOK {
			if reason == "" {
				reason = "torn record"
			}
			return reason, nil
		}
		if want := st.sum.hdr.baseSeq + st.sum.count; rec.seq != want {
			return "unexpected sequence number", nil
		}
		if rec.time < prevTime {
			return "enqueued time goes backwards", nil
		}
		prevTime = rec.time
		st.add(pos, recSize, rec.time)
		pos += int64(recSize)
	}
	return "", nil
}

// fill reads the file at pos into *buf, growing it to hold at least need
// bytes, and reading at most up to size.
func fill(r io.ReaderAt, buf *[]byte, bufPos *int64, bufLen *int, pos int64, need int, size int64) error {
	if len(*buf) < need {
		*buf = make([]byte, max(need, 2*len(*buf)))
	}
	want := min(int64(len(*buf)), size-pos)
	n, err := r.ReadAt((*buf)[:want], pos)
	if int64(n) < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	*bufPos, *bufLen = pos, n
	return nil
}

func (s *segSummary) encodeIndex() []byte {
	b := make([]byte, idxFixedSize+idxEntrySize*len(s.entries)+4)
	copy(b, idxMagic[:])
	le.PutUint16(b[4:], formatVersion)
	le.PutUint64(b[8:], uint64(s.hdr.baseSeq))
	le.PutUint64(b[16:], uint64(s.hdr.baseOffset))
	le.PutUint64(b[24:], uint64(s.hdr.prevOffset))
	le.PutUint64(b[32:], uint64(s.hdr.prevTime))
	le.PutUint64(b[40:], uint64(s.count))
	le.PutUint64(b[48:], uint64(s.dataSize))
	le.PutUint64(b[56:], uint64(s.lastPos))
	le.PutUint64(b[64:], uint64(s.firstTime))
	le.PutUint64(b[72:], uint64(s.lastTime))
	le.PutUint32(b[80:], uint32(len(s.entries)))
	p := idxFixedSize
	for _, e := range s.entries {
		le.PutUint32(b[p:], e.relSeq)
		le.PutUint32(b[p+4:], e.pos)
		le.PutUint64(b[p+8:], uint64(e.time))
		p += idxEntrySize
	}
	le.PutUint32(b[p:], crc32.Checksum(b[:p], castagno))
	return b
}

// decodeIndex parses an index file and checks it for internal consistency.
// The caller still has to compare it with the segment it belongs to.
func decodeIndex(b []byte) (segSummary, string) {
	var s segSummary
	if len(b) < idxFixedSize+4 {
		return s, "short index file"
	}
	if [4]byte(b[:4]) != idxMagic {
		return s, "bad index magic"
	}
	n := int(le.Uint32(b[80:]))
	if n > (len(b)-idxFixedSize-4)/idxEntrySize || idxFixedSize+n*idxEntrySize+4 != len(b) {
		return s, "index length mismatch"
	}
	end := idxFixedSize + n*idxEntrySize
	if crc32.Checksum(b[:end], castagno) != le.Uint32(b[end:]) {
		return s, "index checksum mismatch"
	}
	if le.Uint16(b[4:]) != formatVersion {
		return s, "unsupported index version"
	}
	s.hdr = segHeader{
		baseSeq:    int64(le.Uint64(b[8:])),
		baseOffset: int64(le.Uint64(b[16:])),
		prevOffset: int64(le.Uint64(b[24:])),
		prevTime:   int64(le.Uint64(b[32:])),
	}
	s.count = int64(le.Uint64(b[40:]))
	s.dataSize = int64(le.Uint64(b[48:]))
	s.lastPos = int64(le.Uint64(b[56:]))
	s.firstTime = int64(le.Uint64(b[64:]))
	s.lastTime = int64(le.Uint64(b[72:]))
	if s.hdr.baseSeq < 0 || s.hdr.baseOffset < 0 || s.count < 0 || s.count > 1<<32 ||
		s.dataSize < segHeaderSize || s.dataSize > 1<<32 {
		return s, "index summary out of range"
	}
	if s.count == 0 {
		if n != 0 || s.dataSize != segHeaderSize {
			return s, "index of empty segment has entries"
		}
		return s, ""
	}
	if n == 0 || s.lastPos < segHeaderSize || s.lastPos+recHeaderSize > s.dataSize || s.lastTime < s.firstTime {
		return s, "index summary out of range"
	}
	s.entries = make([]indexEntry, n)
	p := idxFixedSize
	for i := range s.entries {
		e := indexEntry{
			relSeq: le.Uint32(b[p:]),
			pos:    le.Uint32(b[p+4:]),
			time:   int64(le.Uint64(b[p+8:])),
		}
		p += idxEntrySize
		if i == 0 {
			if e.relSeq != 0 || e.pos != segHeaderSize || e.time != s.firstTime {
				return s, "index does not start at the first record"
			}
		} else {
			prev := s.entries[i-1]
			if e.relSeq <= prev.relSeq || e.pos <= prev.pos || e.time < prev.time {
				return s, "index entries out of order"
			}
		}
		if int64(e.relSeq) >= s.count || int64(e.pos) > s.lastPos || e.time > s.lastTime {
			return s, "index entry out of range"
		}
		s.entries[i] = e
	}
	return s, ""
}
