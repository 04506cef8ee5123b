package seglog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/store/partlog"
)

// batch is a run of queued records, laid out exactly as they will be
// written: a 24-byte header (only the length is filled in while queued)
// followed by the payload, back to back. The committer fills in the rest of
// each header and writes the whole buffer with one write(2).
type batch struct {
	buf     []byte
	dones   []func(partlog.Entry, error)
	entries []partlog.Entry
	first   time.Time // when the first record was queued (BatchWindow only)
}

// keepBatchBytes is the buffer capacity a batch keeps between commits; a
// burst may grow it up to MaxQueueBytes, but a batch that used less than a
// quarter of a larger buffer gives it back to the GC.
const keepBatchBytes = 1 << 20

func (b *batch) reset() {
	if c := cap(b.buf); c > keepBatchBytes && len(b.buf) < c/4 {
		b.buf = nil
	}
	b.buf = b.buf[:0]
	clear(b.dones) // drop callback references for the GC
	b.dones = b.dones[:0]
	b.entries = b.entries[:0]
}

// recentN is the number of recent batch starts remembered for the active
// segment, so that readers at the tail find their position without a scan.
const recentN = 64

// partition is one partition of a Log.
//
// Lock order: mu and smu are never held together. mu guards the queue
// (appenders and the committer's swap); smu guards what readers see. No
// lock is held across disk I/O except a segment's fmu while it opens.
type partition struct {
	id   int
	dir  string
	opts *Options
	log  *slog.Logger

	// Queue, guarded by mu.
	mu      sync.Mutex
	pend    *batch
	closed  bool
	spaceCh chan struct{} // closed when the committer takes a batch; nil if nobody waits

	kick    chan struct{} // capacity 1: wakes the committer
	closing chan struct{} // closed by close()
	exited  chan struct{} // closed when the committer returns

	// Committer state: only the committer goroutine uses these once it runs.
	active       *segment
	nextSeq      int64
	lastOffset   int64
	lastTime     int64
	lastIndexPos int64
	dirtyTail    bool // a failed write may have left bytes past active.size
	newIdx       []indexEntry

	// Published state, guarded by smu.
	smu           sync.RWMutex
	segs          []*segment
	next          int64 // sequence number of the next durable record
	pubLastOffset int64
	pubLastTime   int64
	notify        chan struct{} // closed on the first commit after a Wait armed it
	waiting       atomic.Bool   // a Wait is parked on notify
	sclosed       bool
	recent        [recentN]indexEntry // batch starts in the active segment, oldest first
	recentLen     int
}

// errorf formats an error that names the partition.
func (p *partition) errorf(format string, args ...any) error {
	return fmt.Errorf("seglog: partition %d: "+format, append([]any{p.id}, args...)...)
}

// enqueue copies payload into the pending batch, blocking while the queue
// is full or until ctx ends.
func (p *partition) enqueue(ctx context.Context, payload []byte, done func(partlog.Entry, error)) error {
	need := recHeaderSize + len(payload)
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return p.errorf("append: %w", partlog.ErrClosed)
		}
		if len(p.pend.buf) == 0 || len(p.pend.buf)+need <= p.opts.MaxQueueBytes {
			break
		}
		if p.spaceCh == nil {
			p.spaceCh = make(chan struct{})
		}
		ch := p.spaceCh
		p.mu.Unlock()
		select {
		case <-ch:
		case <-p.closing:
		case <-ctx.Done():
			return fmt.Errorf("seglog: append: wait for queue space: %w", ctx.Err())
		}
		p.mu.Lock()
	}
	b := p.pend
	start := len(b.buf)
	b.buf = slices.Grow(b.buf, need)[:start+need]
	le.PutUint32(b.buf[start+4:], uint32(len(payload)))
	copy(b.buf[start+recHeaderSize:], payload)
	b.dones = append(b.dones, done)
	kick := len(b.dones) == 1
	if kick && p.opts.BatchWindow > 0 {
		b.first = time.Now()
	}
	if half := p.opts.MaxQueueBytes / 2; p.opts.BatchWindow > 0 && start < half && len(b.buf) >= half {
		kick = true
	}
	p.mu.Unlock()
	if kick {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// run is the partition's committer: it takes whatever is queued, writes it
// with one write(2), syncs once and then completes every record of the
// batch. It also enforces retention.
func (p *partition) run() {
	defer close(p.exited)
	ticker := time.NewTicker(p.opts.RetentionInterval)
	defer ticker.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	spare := &batch{}
	for {
		select {
		case <-ticker.C:
			p.enforceRetention()
		default:
		}
		p.mu.Lock()
		n, closed := len(p.pend.dones), p.closed
		p.mu.Unlock()
		if n == 0 {
			if closed {
				if err := p.cleanTail(); err != nil {
					p.log.Warn("seglog: discard failed write at close", "partition", p.id, "err", err)
				}
				return
			}
			select {
			case <-p.kick:
			case <-ticker.C:
				p.enforceRetention()
			case <-p.closing:
			}
			continue
		}
		if p.opts.BatchWindow > 0 {
			p.waitWindow(timer)
		}
		p.mu.Lock()
		b := p.pend
		p.pend = spare
		if p.spaceCh != nil {
			close(p.spaceCh)
			p.spaceCh = nil
		}
		p.mu.Unlock()
		p.commit(b)
		b.reset()
		spare = b
	}
}

// waitWindow waits until BatchWindow has passed since the first queued
// record, half the queue is full, or the log closes.
func (p *partition) waitWindow(timer *time.Timer) {
	for {
		p.mu.Lock()
		first, size, closed := p.pend.first, len(p.pend.buf), p.closed
		p.mu.Unlock()
		wait := p.opts.BatchWindow - time.Since(first)
		if closed || wait <= 0 || size >= p.opts.MaxQueueBytes/2 {
			return
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
			return
		case <-p.kick: // maybe the half-full signal; re-check
			timer.Stop()
		case <-p.closing:
			timer.Stop()
			return
		}
	}
}

// commit makes one batch durable and completes its records.
func (p *partition) commit(b *batch) {
	if err := p.prepare(len(b.buf)); err != nil {
		p.fail(b, err)
		return
	}
	seg := p.active
	base := seg.size
	now := max(p.lastTime, p.opts.Now().UnixMilli())
	interval := int64(p.opts.IndexInterval)
	newIdx := p.newIdx[:0]
	lastIndexPos := p.lastIndexPos
	count := seg.count
	seq := p.nextSeq
	entries := slices.Grow(b.entries[:0], len(b.dones))
	off := 0
	var lastPos int64
	for range b.dones {
		rec := b.buf[off:]
		size := recHeaderSize + int(le.Uint32(rec[4:]))
		pos := base + int64(off)
		putRecordHeader(rec, seq, now)
		if count == 0 || pos-lastIndexPos >= interval {
			newIdx = append(newIdx, indexEntry{relSeq: uint32(seq - seg.hdr.baseSeq), pos: uint32(pos), time: now})
			lastIndexPos = pos
		}
		entries = append(entries, partlog.Entry{Seq: seq, Offset: seg.hdr.baseOffset + pos - segHeaderSize, EnqueuedTime: now})
		count++
		seq++
		lastPos = pos
		off += size
	}
	b.entries = entries
	p.newIdx = newIdx
	if _, err := seg.f.WriteAt(b.buf, base); err != nil {
		p.failWrite(b, p.errorf("write segment %s: %w", seg.path, err))
		return
	}
	if err := seg.f.Sync(); err != nil {
		// After a failed fsync the kernel may have dropped the pages, so
		// nothing of this batch is trusted.
		p.failWrite(b, p.errorf("sync segment %s: %w", seg.path, err))
		return
	}
	lastOffset := entries[len(entries)-1].Offset

	p.smu.Lock()
	if seg.count == 0 {
		seg.firstTime = now
	}
	seg.count = count
	seg.size = base + int64(len(b.buf))
	seg.lastPos = lastPos
	seg.lastTime = now
	seg.entries = append(seg.entries, newIdx...)
	if p.recentLen == recentN {
		copy(p.recent[:], p.recent[1:])
		p.recentLen--
	}
	p.recent[p.recentLen] = indexEntry{relSeq: uint32(p.nextSeq - seg.hdr.baseSeq), pos: uint32(base), time: now}
	p.recentLen++
	p.next = seq
	p.pubLastOffset = lastOffset
	p.pubLastTime = now
	var wake chan struct{}
	if p.waiting.Swap(false) {
		wake = p.notify
		p.notify = make(chan struct{})
	}
	p.smu.Unlock()
	if wake != nil {
		close(wake)
	}

	p.nextSeq = seq
	p.lastOffset = lastOffset
	p.lastTime = now
	p.lastIndexPos = lastIndexPos
	for i, done := range b.dones {
		if done != nil {
			done(entries[i], nil)
		}
	}
}

// fail completes every record of b with err; none of them was made durable
// and none consumed a sequence number.
func (p *partition) fail(b *batch, err error) {
	p.log.Warn("seglog: append batch failed", "partition", p.id, "records", len(b.dones), "err", err)
	for _, done := range b.dones {
		if done != nil {
			done(partlog.Entry{}, err)
		}
	}
}

// failWrite fails a batch whose write or sync failed and cuts what it may
// have left in the segment: at once, so that a crash soon after cannot
// bring back records that were reported as failed, and else before the
// next write (cleanTail) or when the log closes.
func (p *partition) failWrite(b *batch, err error) {
	p.dirtyTail = true
	p.fail(b, err)
	if cerr := p.cleanTail(); cerr != nil {
		p.log.Warn("seglog: discard failed write", "partition", p.id, "err", cerr)
	}
}

// prepare readies the active segment for n more bytes: it discards what a
// failed write may have left and rolls to a new segment when full.
func (p *partition) prepare(n int) error {
	if err := p.cleanTail(); err != nil {
		return err
	}
	if p.active.count > 0 && p.active.size+int64(n) > p.opts.SegmentSize {
		if err := p.roll(); err != nil {
			return err
		}
		p.enforceRetention()
	}
	return nil
}

// cleanTail truncates the active segment back to its durable size after a
// failed write or sync, so that no unacknowledged bytes can ever be taken
// for records. Until it succeeds no append can be acknowledged; it is
// retried before every batch, so appends succeed again once the disk does.
func (p *partition) cleanTail() error {
	if !p.dirtyTail {
		return nil
	}
	if err := p.active.f.Truncate(p.active.size); err != nil {
		return p.errorf("discard failed write in %s: %w", p.active.path, err)
	}
	if err := p.active.f.Sync(); err != nil {
		return p.errorf("sync %s after discarding failed write: %w", p.active.path, err)
	}
	p.dirtyTail = false
	return nil
}

// roll seals the active segment and starts a new one.
func (p *partition) roll() error {
	if err := p.cleanTail(); err != nil {
		return err
	}
	old := p.active
	sum := old.summary()
	// The index file is a cache (Open rebuilds a bad one), so it is not
	// synced and a failure to write it does not stop the roll.
	if err := writeFileAtomic(old.idxPath, sum.encodeIndex(), false); err != nil {
		p.log.Warn("seglog: write index", "partition", p.id, "path", old.idxPath, "err", err)
	}
	ns, err := createSegment(p.dir, segHeader{
		baseSeq:    p.nextSeq,
		baseOffset: old.endOffset(),
		prevOffset: p.lastOffset,
		prevTime:   p.lastTime,
	}, p.opts.openFile)
	if err != nil {
		return p.errorf("roll segment: %w", err)
	}
	p.smu.Lock()
	p.segs = append(p.segs, ns)
	p.recentLen = 0
	p.smu.Unlock()
	p.active = ns
	p.lastIndexPos = 0
	return nil
}

// createSegment creates an empty segment durably: the header is written to
// a temporary file and synced, then the file is renamed into place and the
// directory synced, so a segment file always has a complete header.
func createSegment(dir string, h segHeader, open openFunc) (*segment, error) {
	path, _ := segPaths(dir, h.baseSeq)
	tmp := path + tmpSuffix
	f, err := open(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create segment: %w", err)
	}
	_, err = f.WriteAt(h.encode(), 0)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		_ = f.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("create segment %s: %w", path, err)
	}
	sum := segSummary{hdr: h, dataSize: segHeaderSize}
	return newSegment(dir, &sum, f, open), nil
}

// enforceRetention deletes the segments that are entirely older than the
// retention period, then the oldest ones while the partition is over
// RetentionBytes. A fully expired active segment is rolled first so that
// it can go too.
func (p *partition) enforceRetention() {
	cutoff := p.opts.Now().UnixMilli() - p.opts.Retention.Milliseconds()
	if p.active.count > 0 && p.lastTime < cutoff {
		if err := p.roll(); err != nil {
			p.log.Warn("seglog: roll expired segment", "partition", p.id, "err", err)
		}
	}
	p.smu.Lock()
	drop := 0
	for drop < len(p.segs)-1 {
		s := p.segs[drop]
		if s.count > 0 && s.lastTime >= cutoff {
			break
		}
		drop++
	}
	if p.opts.RetentionBytes > 0 {
		var total int64
		for _, s := range p.segs[drop:] {
			total += s.size
		}
		for drop < len(p.segs)-1 && total > p.opts.RetentionBytes {
			total -= p.segs[drop].size
			drop++
		}
	}
	var removed []*segment
	if drop > 0 {
		removed = slices.Clone(p.segs[:drop])
		n := copy(p.segs, p.segs[drop:])
		clear(p.segs[n:])
		p.segs = p.segs[:n]
	}
	p.smu.Unlock()
	for _, s := range removed {
		s.removed.Store(true)
		// Oldest first, so that a crash in between leaves a contiguous log.
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("seglog: delete expired segment", "partition", p.id, "path", s.path, "err", err)
		}
		if err := os.Remove(s.idxPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("seglog: delete expired index", "partition", p.id, "path", s.idxPath, "err", err)
		}
		p.log.Debug("seglog: deleted segment", "partition", p.id, "base_seq", s.hdr.baseSeq, "records", s.count)
		s.release()
	}
}

// close stops accepting appends; the committer drains the queue and exits.
func (p *partition) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.closing)
	}
	p.mu.Unlock()
}

// shutdown runs after the committer exited: readers and waiters get
// ErrClosed and the files are released.
func (p *partition) shutdown() {
	p.smu.Lock()
	p.sclosed = true
	segs := p.segs
	p.segs = nil
	close(p.notify)
	p.smu.Unlock()
	for _, s := range segs {
		s.release()
	}
}
