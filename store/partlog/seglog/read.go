package seglog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"amqphub/store/partlog"
)

// Read sizing: a Read allocates one buffer per disk read, sized from the
// segment's average record size, so that the payloads it returns can point
// into it without copying and without pinning much more than was asked for.
const (
	minReadChunk = 512
	maxReadChunk = 8 << 20
)

// cursor is a reader's position in a segment, taken under smu.
type cursor struct {
	seg    *segment
	seq    int64 // sequence number of the record at pos
	pos    int64
	end    int64 // durable end of the segment
	endSeq int64
	avg    int64 // average record size, for read sizing
}

// locate finds the segment holding seq and the closest known record
// position at or before it. It returns ok == false when the partition holds
// no record >= seq; then next is the next sequence number. On success the
// caller must release c.seg.
func (p *partition) locate(seq int64) (c cursor, next int64, err error) {
	p.smu.RLock()
	defer p.smu.RUnlock()
	if p.sclosed {
		return c, 0, p.errorf("%w", partlog.ErrClosed)
	}
	if begin := p.segs[0].hdr.baseSeq; seq < begin {
		seq = begin
	}
	if seq >= p.next {
		return c, p.next, nil
	}
	// Last segment whose first sequence number is <= seq; empty segments
	// share their successor's base, and Search picks the later one.
	i := sort.Search(len(p.segs), func(i int) bool { return p.segs[i].hdr.baseSeq > seq }) - 1
	s := p.segs[i]
	e := s.hintEntry(seq, s.seqEntry(seq))
	if s == p.lastSeg() && p.recentLen > 0 {
		rel := uint32(seq - s.hdr.baseSeq)
		for j := p.recentLen - 1; j >= 0; j-- {
			if r := p.recent[j]; r.relSeq <= rel {
				if r.relSeq > e.relSeq {
					e = r
				}
				break
			}
		}
	}
	s.acquire()
	return p.cursorAt(s, e), p.next, nil
}

// lastSeg returns the last segment; caller holds smu.
func (p *partition) lastSeg() *segment { return p.segs[len(p.segs)-1] }

func (p *partition) cursorAt(s *segment, e indexEntry) cursor {
	return cursor{
		seg:    s,
		seq:    s.hdr.baseSeq + int64(e.relSeq),
		pos:    int64(e.pos),
		end:    s.size,
		endSeq: s.endSeq(),
		avg:    max((s.size-segHeaderSize)/max(s.count, 1), recHeaderSize),
	}
}

func (p *partition) read(fromSeq int64, maxRecords, maxBytes int, dst []partlog.Record) ([]partlog.Record, error) {
	if maxRecords <= 0 {
		return dst, nil
	}
	for {
		c, _, err := p.locate(fromSeq)
		if err != nil || c.seg == nil {
			return dst, err
		}
		out, err := p.readFrom(c, fromSeq, maxRecords, maxBytes, dst)
		if errors.Is(err, errRemoved) {
			continue // retention got there first; start again from the new beginning
		}
		return out, err
	}
}

// errRemoved means retention deleted a segment before a reader that had
// located it could open it.
var errRemoved = errors.New("seglog: segment removed by retention")

// openCursor opens c's segment for a reader, reporting errRemoved if the
// file is gone because retention deleted it.
func (p *partition) openCursor(c cursor) (segFile, error) {
	f, err := c.seg.file()
	if err != nil {
		if c.seg.removed.Load() {
			return nil, errRemoved
		}
		return nil, p.errorf("%w", err)
	}
	return f, nil
}

// readFrom is read from a located cursor, whose reference it releases.
func (p *partition) readFrom(c cursor, fromSeq int64, maxRecords, maxBytes int, dst []partlog.Record) ([]partlog.Record, error) {
	defer c.seg.release()
	f, err := p.openCursor(c)
	if err != nil {
		return dst, err
	}
	// Skip to fromSeq reading headers only, into a pooled buffer, so that
	// the buffer the payloads alias holds only what is returned.
	if fromSeq > c.seq {
		if err := p.walk(f, &c, func(seq, _, _ int64) bool { return seq >= fromSeq }); err != nil {
			return dst, err
		}
	}
	defer func() { c.seg.addHint(c.seq, c.pos) }()
	want := min(int64(maxRecords), c.endSeq-c.seq)
	var (
		buf    []byte
		bufPos int64
		got    int
		bytes  int
	)
	for c.seq < c.endSeq && got < maxRecords {
		rel := c.pos - bufPos
		if buf == nil || rel+recHeaderSize > int64(len(buf)) {
			// Size the read from the average record size.
			n := (want-int64(got))*c.avg + c.avg/4
			if maxBytes > 0 {
				n = min(n, int64(maxBytes)+(want-int64(got))*recHeaderSize)
			}
			if err := p.readChunk(f, &buf, &bufPos, c, recHeaderSize, n); err != nil {
				return dst, err
			}
			rel = 0
		}
		size := recHeaderSize + int64(le.Uint32(buf[rel+4:]))
		if c.pos+size > c.end || size > recHeaderSize+maxRecordPayload {
			return dst, &partlog.CorruptError{Path: c.seg.path, Pos: c.pos, Reason: "record length out of range"}
		}
		if rel+size > int64(len(buf)) {
			if err := p.readChunk(f, &buf, &bufPos, c, size, size+(want-int64(got)-1)*c.avg); err != nil {
				return dst, err
			}
			rel = 0
		}
		rec, _, res, reason := decodeRecord(buf[rel : rel+size])
		if res == decOK && rec.seq != c.seq {
			res, reason = decBad, "unexpected sequence number"
		}
		if res != decOK {
			return dst, &partlog.CorruptError{Path: c.seg.path, Pos: c.pos, Reason: reason}
		}
		if got > 0 && maxBytes > 0 && bytes+len(rec.payload) > maxBytes {
			break
		}
		dst = append(dst, partlog.Record{
			Entry: partlog.Entry{
				Seq:          rec.seq,
				Offset:       c.seg.hdr.baseOffset + c.pos - segHeaderSize,
				EnqueuedTime: rec.time,
			},
			Payload: rec.payload,
		})
		got++
		bytes += len(rec.payload)
		c.pos += size
		c.seq++
	}
	return dst, nil
}

// readChunk replaces *buf with a new buffer holding the segment from c.pos:
// at least need bytes, about n if the read bounds and the durable end allow.
// A new buffer rather than a reused one, because returned payloads alias it.
func (p *partition) readChunk(f segFile, buf *[]byte, bufPos *int64, c cursor, need, n int64) error {
	n = min(max(n, need, minReadChunk), max(need, maxReadChunk), c.end-c.pos)
	if n < need {
		return &partlog.CorruptError{Path: c.seg.path, Pos: c.pos, Reason: "record runs past the end of the segment"}
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, c.pos); err != nil {
		return p.errorf("read %s at %d: %w", c.seg.path, c.pos, err)
	}
	*buf, *bufPos = b, c.pos
	return nil
}

// scratchPool holds buffers for seeks, which only look at record headers.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// walk moves c forward, record by record, reading only headers, until
// stop(seq, pos, time) is true for the record at c or c reaches the
// segment's durable end.
func (p *partition) walk(f segFile, c *cursor, stop func(seq, pos, t int64) bool) error {
	bp := scratchPool.Get().(*[]byte)
	defer scratchPool.Put(bp)
	buf := *bp
	// Index entries are IndexInterval apart, so a walk usually ends within
	// that distance: read about that much at a time.
	chunk := min(int64(len(buf)), max(int64(p.opts.IndexInterval)+1024, 4096))
	bufPos, bufLen := int64(0), 0
	for c.seq < c.endSeq {
		rel := int(c.pos - bufPos)
		if bufLen == 0 || rel+recHeaderSize > bufLen {
			n := min(chunk, c.end-c.pos)
			if n < recHeaderSize {
				return &partlog.CorruptError{Path: c.seg.path, Pos: c.pos, Reason: "torn record header"}
			}
			if _, err := f.ReadAt(buf[:n], c.pos); err != nil {
				return p.errorf("read %s at %d: %w", c.seg.path, c.pos, err)
			}
			bufPos, bufLen, rel = c.pos, int(n), 0
		}
		h := buf[rel:]
		size := recHeaderSize + int64(le.Uint32(h[4:]))
		seq, t := int64(le.Uint64(h[8:])), int64(le.Uint64(h[16:]))
		if seq != c.seq || c.pos+size > c.end {
			return &partlog.CorruptError{Path: c.seg.path, Pos: c.pos, Reason: "record header out of sequence"}
		}
		if stop(c.seq, c.pos, t) {
			return nil
		}
		c.pos += size
		c.seq++
	}
	return nil
}

// seekIn opens c's segment and walks it to the first record for which
// stop is true, returning that record's sequence number (the segment's end
// if none). It releases c's reference.
func (p *partition) seekIn(c cursor, stop func(seq, pos, t int64) bool) (int64, error) {
	defer c.seg.release()
	f, err := p.openCursor(c)
	if err != nil {
		return 0, err
	}
	if err := p.walk(f, &c, stop); err != nil {
		return 0, err
	}
	c.seg.addHint(c.seq, c.pos)
	return c.seq, nil
}

// retrySeek runs a seek again when retention removed its segment.
func retrySeek(seek func() (int64, error)) (int64, error) {
	for {
		seq, err := seek()
		if !errors.Is(err, errRemoved) {
			return seq, err
		}
	}
}

func (p *partition) seekOffset(offset int64) (int64, error) {
	return retrySeek(func() (int64, error) { return p.seekOffsetOnce(offset) })
}

func (p *partition) seekTime(t int64) (int64, error) {
	return retrySeek(func() (int64, error) { return p.seekTimeOnce(t) })
}

func (p *partition) seekOffsetOnce(offset int64) (int64, error) {
	p.smu.RLock()
	if p.sclosed {
		p.smu.RUnlock()
		return 0, p.errorf("%w", partlog.ErrClosed)
	}
	// Last segment whose first offset is <= offset.
	i := sort.Search(len(p.segs), func(i int) bool { return p.segs[i].hdr.baseOffset > offset }) - 1
	if i < 0 {
		begin := p.segs[0].hdr.baseSeq
		p.smu.RUnlock()
		return begin, nil
	}
	s := p.segs[i]
	if s.count == 0 || offset >= s.endOffset() {
		end := s.endSeq()
		p.smu.RUnlock()
		return end, nil
	}
	target := offset - s.hdr.baseOffset + segHeaderSize
	c := p.cursorAt(s, s.posEntry(target))
	s.acquire()
	p.smu.RUnlock()
	return p.seekIn(c, func(_, pos, _ int64) bool { return pos >= target })
}

func (p *partition) seekTimeOnce(t int64) (int64, error) {
	p.smu.RLock()
	if p.sclosed {
		p.smu.RUnlock()
		return 0, p.errorf("%w", partlog.ErrClosed)
	}
	// First segment holding a record at or after t. An empty segment
	// counts with the time of the record before it, which keeps the
	// sequence of segment times non-decreasing for the binary search; an
	// empty segment is only found when no later record exists or when the
	// answer is its successor's first record, which has its base.
	i := sort.Search(len(p.segs), func(i int) bool {
		s := p.segs[i]
		if s.count == 0 {
			return s.hdr.prevTime >= t
		}
		return s.lastTime >= t
	})
	if i == len(p.segs) {
		next := p.next
		p.smu.RUnlock()
		return next, nil
	}
	s := p.segs[i]
	e, ok := s.timeEntry(t)
	if s.count == 0 || !ok {
		p.smu.RUnlock()
		return s.hdr.baseSeq, nil
	}
	c := p.cursorAt(s, e)
	s.acquire()
	p.smu.RUnlock()
	return p.seekIn(c, func(_, _, rt int64) bool { return rt >= t })
}

func (p *partition) info() (partlog.Info, error) {
	p.smu.RLock()
	defer p.smu.RUnlock()
	if p.sclosed {
		return partlog.Info{}, p.errorf("%w", partlog.ErrClosed)
	}
	begin := p.segs[0].hdr.baseSeq
	return partlog.Info{
		BeginSeq:         begin,
		LastSeq:          p.next - 1,
		LastOffset:       p.pubLastOffset,
		LastEnqueuedTime: p.pubLastTime,
		Empty:            begin >= p.next,
	}, nil
}

func (p *partition) wait(ctx context.Context, afterSeq int64) error {
	for {
		p.smu.RLock()
		if p.sclosed {
			p.smu.RUnlock()
			return p.errorf("wait: %w", partlog.ErrClosed)
		}
		if p.next-1 > afterSeq {
			p.smu.RUnlock()
			return nil
		}
		// Armed under smu, so the next commit (which swaps under the write
		// lock) is certain to see it and close this channel.
		p.waiting.Store(true)
		ch := p.notify
		p.smu.RUnlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("seglog: wait: %w", ctx.Err())
		}
	}
}
