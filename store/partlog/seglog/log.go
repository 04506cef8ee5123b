// Package seglog is the embedded implementation of partlog.Log: every
// partition is a directory of segment files on the local disk, written with
// group commit and synced before any append is acknowledged.
//
// # Layout
//
//	<dir>/LOCK                  flock(2)ed while open
//	<dir>/META                  {"format":"amqphub-partlog","version":1,"partitions":N}
//	<dir>/pNN/<baseSeq>.seg     segment: header + length-prefixed CRC32C records
//	<dir>/pNN/<baseSeq>.idx     sparse index of a sealed segment
//
// See format.go for the byte layout.
//
// # Writes
//
// Appends are copied into a per-partition queue laid out as it will be
// written. One committer goroutine per partition takes the whole queue,
// stamps sequence numbers, offsets and one enqueued time, writes it with
// one pwrite(2), fdatasyncs, publishes it to readers and then calls the
// completions. With Options.BatchWindow 0 (the default) batching is
// adaptive; see Options.
//
// # Failures
//
// If a write or sync fails (for example ENOSPC), every record of the batch
// is completed with the error and none is acknowledged or consumes a
// sequence number. Before the next batch the committer truncates the
// segment back to its last durable size and syncs it, so partial bytes can
// neither be read nor resurface after a crash; it retries that on every
// batch, so appends succeed again once the disk has room. (A record
// reported as failed can only come back if that truncation failed too and
// the process stopped before it could be retried: at-least-once, never
// lost.)
//
// # Indexes and recovery
//
// Each segment has a sparse in-memory index (one entry per IndexInterval
// bytes). A sealed segment's index is saved next to it, so Open reads one
// small file per sealed segment instead of scanning gigabytes; a missing or
// inconsistent index file is rebuilt by a scan. Only the last segment is
// always scanned: its torn or corrupt tail (after a crash) is truncated to
// the last valid record. Damage anywhere else fails Open with a
// *partlog.CorruptError rather than silently dropping acknowledged data.
//
// The implementation targets Linux (it relies on deleting segment files
// that readers still have open).
package seglog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"amqphub/store/partlog"
)

// Log is a partlog.Log stored in segment files. Create it with Open.
type Log struct {
	dir       string
	opts      Options
	parts     []*partition
	lock      *os.File
	closeOnce sync.Once
}

var _ partlog.Log = (*Log)(nil)

const (
	metaName   = "META"
	lockName   = "LOCK"
	metaFormat = "amqphub-partlog"
)

type meta struct {
	Format     string `json:"format"`
	Version    int    `json:"version"`
	Partitions int    `json:"partitions"`
}

// Open opens the log in dir, creating it if needed, and recovers every
// partition (see the package documentation).
func Open(dir string, opts Options) (*Log, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("seglog: create %s: %w", dir, err)
	}
	lock, err := lockDir(filepath.Join(dir, lockName))
	if err != nil {
		return nil, fmt.Errorf("seglog: %w", err)
	}
	n, err := loadOrCreateMeta(dir, o.Partitions)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	o.Partitions = n
	l := &Log{dir: dir, opts: o, lock: lock}
	for i := range n {
		p, err := openPartition(filepath.Join(dir, fmt.Sprintf("p%02d", i)), i, &l.opts)
		if err != nil {
			for _, q := range l.parts {
				q.shutdown()
			}
			_ = lock.Close()
			return nil, err
		}
		l.parts = append(l.parts, p)
	}
	for _, p := range l.parts {
		// Before the committer starts, so that Open returns a log whose
		// expired records are already gone.
		p.enforceRetention()
		go p.run()
	}
	return l, nil
}

func loadOrCreateMeta(dir string, partitions int) (int, error) {
	path := filepath.Join(dir, metaName)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var m meta
		if err := json.Unmarshal(b, &m); err != nil {
			return 0, fmt.Errorf("seglog: parse %s: %w", path, err)
		}
		if m.Format != metaFormat || m.Version != 1 || m.Partitions < 1 || m.Partitions > partlog.MaxPartitions {
			return 0, fmt.Errorf("seglog: %s: unsupported or invalid metadata %q", path, b)
		}
		if partitions != 0 && partitions != m.Partitions {
			return 0, fmt.Errorf("seglog: %s holds %d partitions, asked for %d: %w", dir, m.Partitions, partitions, partlog.ErrPartitionCountMismatch)
		}
		return m.Partitions, nil
	case errors.Is(err, fs.ErrNotExist):
		entries, err := os.ReadDir(dir)
		if err != nil {
			return 0, fmt.Errorf("seglog: read %s: %w", dir, err)
		}
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), "p") {
				return 0, fmt.Errorf("seglog: %s has partition directories but no %s", dir, metaName)
			}
		}
		if partitions == 0 {
			return 0, fmt.Errorf("seglog: new log in %s needs Options.Partitions", dir)
		}
		b, _ := json.Marshal(meta{Format: metaFormat, Version: 1, Partitions: partitions})
		if err := writeFileAtomic(path, b, true); err != nil {
			return 0, fmt.Errorf("seglog: write %s: %w", path, err)
		}
		return partitions, nil
	default:
		return 0, fmt.Errorf("seglog: read %s: %w", path, err)
	}
}

// openPartition loads a partition directory and recovers its last segment.
func openPartition(dir string, id int, o *Options) (*partition, error) {
	p := &partition{
		id:      id,
		dir:     dir,
		opts:    o,
		log:     o.Logger,
		pend:    &batch{},
		kick:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		exited:  make(chan struct{}),
		notify:  make(chan struct{}),
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, p.errorf("create %s: %w", dir, err)
		}
		// The new directory's entry must be durable before any record
		// acknowledged in it.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return nil, p.errorf("%w", err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, p.errorf("read %s: %w", dir, err)
	}
	var bases []int64
	idx := map[int64]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, tmpSuffix) {
			// An unfinished create or index write; never referenced.
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		base, ext, ok := parseSegName(name)
		if !ok {
			continue
		}
		if ext == segSuffix {
			bases = append(bases, base)
		} else {
			idx[base] = true
		}
	}
	slices.Sort(bases)

	var (
		segs []*segment
		prev *segSummary
		st   *scanState
	)
	fail := func(err error) (*partition, error) {
		for _, s := range segs {
			s.release()
		}
		return nil, err
	}
	if len(bases) == 0 {
		s, err := createSegment(dir, segHeader{prevOffset: -1}, o.openFile)
		if err != nil {
			return nil, p.errorf("%w", err)
		}
		segs = append(segs, s)
		st = newScanState(s.hdr, o.IndexInterval)
		prev = &st.sum
	}
	for i, base := range bases {
		var sum segSummary
		var f segFile
		if i < len(bases)-1 {
			sum, err = loadSealed(dir, base, o)
		} else {
			st, f, err = recoverLast(dir, base, prev, o)
			if st != nil {
				sum = st.sum
			}
		}
		if err != nil {
			return fail(p.errorf("%w", err))
		}
		if prev != nil {
			wantSeq := prev.hdr.baseSeq + prev.count
			wantOff := prev.hdr.baseOffset + prev.dataSize - segHeaderSize
			if sum.hdr.baseSeq != wantSeq || sum.hdr.baseOffset != wantOff {
				path, _ := segPaths(dir, base)
				if f != nil {
					_ = f.Close()
				}
				return fail(p.errorf("%w", &partlog.CorruptError{Path: path, Reason: fmt.Sprintf(
					"segment starts at seq %d offset %d, previous segment ends at seq %d offset %d",
					sum.hdr.baseSeq, sum.hdr.baseOffset, wantSeq, wantOff)}))
			}
		}
		segs = append(segs, newSegment(dir, &sum, f, o.openFile))
		prev = &sum
		delete(idx, base)
	}
	// Index files of the last segment (left by a failed roll) or of no
	// segment at all are stale.
	for base := range idx {
		_, path := segPaths(dir, base)
		_ = os.Remove(path)
	}
	if n := len(bases); n > 0 {
		_, path := segPaths(dir, bases[n-1])
		_ = os.Remove(path)
	}

	last := segs[len(segs)-1]
	p.segs = segs
	p.active = last
	p.nextSeq = last.endSeq()
	p.lastOffset = st.sum.lastOffset()
	p.lastTime = st.sum.lastTimeOr()
	p.lastIndexPos = st.lastIndexPos
	p.next = p.nextSeq
	p.pubLastOffset = p.lastOffset
	p.pubLastTime = p.lastTime
	return p, nil
}

// parseSegName parses "<20 digits>.seg" or ".idx".
func parseSegName(name string) (int64, string, bool) {
	ext := filepath.Ext(name)
	if ext != segSuffix && ext != idxSuffix {
		return 0, "", false
	}
	digits := strings.TrimSuffix(name, ext)
	if len(digits) != 20 {
		return 0, "", false
	}
	base, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || base < 0 {
		return 0, "", false
	}
	return base, ext, true
}

// loadSealed returns a sealed segment's summary from its index file, or
// rebuilds the index by scanning the segment when the file is missing or
// does not match.
func loadSealed(dir string, base int64, o *Options) (segSummary, error) {
	segPath, idxPath := segPaths(dir, base)
	fi, err := os.Stat(segPath)
	if err != nil {
		return segSummary{}, fmt.Errorf("stat segment: %w", err)
	}
	b, err := os.ReadFile(idxPath)
	if err == nil {
		sum, reason := decodeIndex(b)
		if reason == "" && sum.hdr.baseSeq == base && sum.dataSize == fi.Size() {
			return sum, nil
		}
		if reason == "" {
			reason = "index does not match its segment"
		}
		o.Logger.Warn("seglog: rebuilding index", "path", idxPath, "reason", reason)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return segSummary{}, fmt.Errorf("read index: %w", err)
	}
	f, err := o.openFile(segPath, os.O_RDONLY, 0)
	if err != nil {
		return segSummary{}, fmt.Errorf("open segment: %w", err)
	}
	defer f.Close()
	hdr, err := readSegHeader(f, segPath, fi.Size(), base)
	if err != nil {
		return segSummary{}, err
	}
	st := newScanState(hdr, o.IndexInterval)
	reason, err := scanSegment(f, fi.Size(), st)
	if err != nil {
		return segSummary{}, fmt.Errorf("scan %s: %w", segPath, err)
	}
	if reason != "" {
		// A sealed segment was synced in full before the next one was
		// created, so this is damage, not a torn write: refuse rather than
		// drop acknowledged records.
		return segSummary{}, &partlog.CorruptError{Path: segPath, Pos: st.sum.dataSize, Reason: reason}
	}
	if err := writeFileAtomic(idxPath, st.sum.encodeIndex(), false); err != nil {
		o.Logger.Warn("seglog: write rebuilt index", "path", idxPath, "err", err)
	}
	return st.sum, nil
}

func readSegHeader(f segFile, path string, size, base int64) (segHeader, error) {
	var b [segHeaderSize]byte
	if size < segHeaderSize {
		return segHeader{}, &partlog.CorruptError{Path: path, Reason: "short segment header"}
	}
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return segHeader{}, fmt.Errorf("read segment header %s: %w", path, err)
	}
	h, reason := decodeSegHeader(b[:])
	if reason == "" && h.baseSeq != base {
		reason = "segment header does not match its file name"
	}
	if reason != "" {
		return segHeader{}, &partlog.CorruptError{Path: path, Reason: reason}
	}
	return h, nil
}

// recoverLast opens the last segment for writing, scans it and truncates a
// torn or corrupt tail. prev summarises the segment before it, if any.
func recoverLast(dir string, base int64, prev *segSummary, o *Options) (*scanState, segFile, error) {
	path, _ := segPaths(dir, base)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("stat segment: %w", err)
	}
	size := fi.Size()
	f, err := o.openFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open segment: %w", err)
	}
	hdr, err := readSegHeader(f, path, size, base)
	var ce *partlog.CorruptError
	if errors.As(err, &ce) {
		// Segments are renamed into place only after their header is
		// synced, so this is damage. The header is redundant with the end
		// of the previous segment; rewrite it so the records after it are
		// not lost.
		switch {
		case prev != nil:
			hdr = segHeader{
				baseSeq:    prev.hdr.baseSeq + prev.count,
				baseOffset: prev.hdr.baseOffset + prev.dataSize - segHeaderSize,
				prevOffset: prev.lastOffset(),
				prevTime:   prev.lastTimeOr(),
			}
		case base == 0:
			hdr = segHeader{prevOffset: -1}
		default:
			_ = f.Close()
			return nil, nil, err
		}
		if hdr.baseSeq != base {
			_ = f.Close()
			return nil, nil, err
		}
		o.Logger.Warn("seglog: rewriting damaged segment header", "path", path, "reason", ce.Reason)
		if _, err := f.WriteAt(hdr.encode(), 0); err != nil {
			_ = f.Close()
			return nil, nil, fmt.Errorf("rewrite header of %s: %w", path, err)
		}
		size = max(size, segHeaderSize)
	} else if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	st := newScanState(hdr, o.IndexInterval)
	reason, err := scanSegment(f, size, st)
	if err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("scan %s: %w", path, err)
	}
	if st.sum.dataSize < size {
		o.Logger.Warn("seglog: truncating torn tail", "path", path, "valid_bytes", st.sum.dataSize,
			"dropped_bytes", size-st.sum.dataSize, "records", st.sum.count, "reason", reason)
		if err := f.Truncate(st.sum.dataSize); err != nil {
			_ = f.Close()
			return nil, nil, fmt.Errorf("truncate torn tail of %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("sync %s: %w", path, err)
	}
	return st, f, nil
}

func (l *Log) part(i int) (*partition, error) {
	if i < 0 || i >= len(l.parts) {
		return nil, fmt.Errorf("seglog: partition %d of %d: %w", i, len(l.parts), partlog.ErrInvalidPartition)
	}
	return l.parts[i], nil
}

// Partitions returns the partition count.
func (l *Log) Partitions() int { return len(l.parts) }

// AppendAsync implements partlog.Log. The payload is copied into the
// partition's queue before it returns. It blocks while the partition has
// more than Options.MaxQueueBytes queued.
func (l *Log) AppendAsync(partition int, payload []byte, done func(partlog.Entry, error)) error {
	p, err := l.part(partition)
	if err != nil {
		return err
	}
	if len(payload) > l.opts.MaxPayload {
		return fmt.Errorf("seglog: %d bytes, limit %d: %w", len(payload), l.opts.MaxPayload, partlog.ErrPayloadTooLarge)
	}
	return p.enqueue(context.Background(), payload, done)
}

// waiter turns a completion into a channel receive; pooled so that Append
// does not allocate.
type waiter struct {
	ch chan waitResult
	fn func(partlog.Entry, error)
}

type waitResult struct {
	e   partlog.Entry
	err error
}

var waiterPool = sync.Pool{New: func() any {
	w := &waiter{ch: make(chan waitResult, 1)}
	w.fn = func(e partlog.Entry, err error) { w.ch <- waitResult{e, err} }
	return w
}}

// Append implements partlog.Log. It also gives up waiting for queue space
// when ctx ends.
func (l *Log) Append(ctx context.Context, partition int, payload []byte) (partlog.Entry, error) {
	p, err := l.part(partition)
	if err != nil {
		return partlog.Entry{}, err
	}
	if len(payload) > l.opts.MaxPayload {
		return partlog.Entry{}, fmt.Errorf("seglog: %d bytes, limit %d: %w", len(payload), l.opts.MaxPayload, partlog.ErrPayloadTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return partlog.Entry{}, fmt.Errorf("seglog: append: %w", err)
	}
	w := waiterPool.Get().(*waiter)
	if err := p.enqueue(ctx, payload, w.fn); err != nil {
		waiterPool.Put(w)
		return partlog.Entry{}, err
	}
	select {
	case r := <-w.ch:
		waiterPool.Put(w)
		return r.e, r.err
	case <-ctx.Done():
		// The completion will still arrive; w is not reused.
		return partlog.Entry{}, fmt.Errorf("seglog: append: %w", ctx.Err())
	}
}

// Read implements partlog.Log. Payloads of one call share one or a few
// freshly allocated buffers.
func (l *Log) Read(partition int, fromSeq int64, maxRecords, maxBytes int, dst []partlog.Record) ([]partlog.Record, error) {
	p, err := l.part(partition)
	if err != nil {
		return dst, err
	}
	return p.read(fromSeq, maxRecords, maxBytes, dst)
}

// SeekOffset implements partlog.Log.
func (l *Log) SeekOffset(partition int, offset int64) (int64, error) {
	p, err := l.part(partition)
	if err != nil {
		return 0, err
	}
	return p.seekOffset(offset)
}

// SeekTime implements partlog.Log.
func (l *Log) SeekTime(partition int, t int64) (int64, error) {
	p, err := l.part(partition)
	if err != nil {
		return 0, err
	}
	return p.seekTime(t)
}

// Info implements partlog.Log.
func (l *Log) Info(partition int) (partlog.Info, error) {
	p, err := l.part(partition)
	if err != nil {
		return partlog.Info{}, err
	}
	return p.info()
}

// Wait implements partlog.Log.
func (l *Log) Wait(ctx context.Context, partition int, afterSeq int64) error {
	p, err := l.part(partition)
	if err != nil {
		return err
	}
	return p.wait(ctx, afterSeq)
}

// Close implements partlog.Log: queued records are committed (or failed)
// before it returns.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		for _, p := range l.parts {
			p.close()
		}
		for _, p := range l.parts {
			<-p.exited
			p.shutdown()
		}
		_ = l.lock.Close()
	})
	return nil
}
