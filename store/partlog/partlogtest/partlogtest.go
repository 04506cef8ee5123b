// Package partlogtest is the conformance suite every partlog.Log
// implementation must pass. It covers the backend-independent contract:
// numbering, ordering, reads, seeks, Info, Wait, back-pressure-free
// concurrency, Close and argument errors. Durability across restarts and
// retention depend on the backend and are tested by each backend.
package partlogtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/store/partlog"
)

// Run runs the suite. open must return a new, empty Log with the given
// number of partitions; the suite closes every Log it opens, and open may
// also register its own t.Cleanup (Close is idempotent).
func Run(t *testing.T, open func(t *testing.T, partitions int) partlog.Log) {
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T, int) partlog.Log)
	}{
		{"Empty", testEmpty},
		{"AppendRead", testAppendRead},
		{"PayloadCopied", testPayloadCopied},
		{"ReadBounds", testReadBounds},
		{"SeekOffset", testSeekOffset},
		{"SeekTime", testSeekTime},
		{"ConcurrentAppendAsync", testConcurrentAppendAsync},
		{"CallOrder", testCallOrder},
		{"TailReaders", testTailReaders},
		{"Wait", testWait},
		{"AppendContext", testAppendContext},
		{"LargePayload", testLargePayload},
		{"MaxPartitions", testMaxPartitions},
		{"InvalidPartition", testInvalidPartition},
		{"Close", testClose},
		{"CloseCompletesPending", testCloseCompletesPending},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// openLog opens a Log and closes it when the test ends.
func openLog(t *testing.T, open func(*testing.T, int) partlog.Log, n int) partlog.Log {
	t.Helper()
	l := open(t, n)
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return l
}

// payload returns a deterministic payload of the given size for key: the
// key in the first 8 bytes (when it fits), then a key-dependent pattern.
func payload(key uint64, size int) []byte {
	b := make([]byte, size)
	var k [8]byte
	binary.LittleEndian.PutUint64(k[:], key)
	copy(b, k[:])
	for i := 8; i < size; i++ {
		b[i] = byte(key*31 + uint64(i)*7)
	}
	return b
}

// keyOf recovers the key of a payload made by payload (size >= 8).
func keyOf(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// testCtx bounds a test that waits on the log, so that a hang fails
// instead of blocking until the go test timeout.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readAll reads partition p from fromSeq to its end, looping as the
// contract allows short reads.
func readAll(t *testing.T, l partlog.Log, p int, fromSeq int64) []partlog.Record {
	t.Helper()
	var out []partlog.Record
	for {
		n := len(out)
		var err error
		out, err = l.Read(p, fromSeq, 1000, 0, out)
		if err != nil {
			t.Fatalf("Read(%d, %d): %v", p, fromSeq, err)
		}
		if len(out) == n {
			return out
		}
		fromSeq = out[len(out)-1].Seq + 1
	}
}

func mustInfo(t *testing.T, l partlog.Log, p int) partlog.Info {
	t.Helper()
	info, err := l.Info(p)
	if err != nil {
		t.Fatalf("Info(%d): %v", p, err)
	}
	return info
}

func testEmpty(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 3)
	if got := l.Partitions(); got != 3 {
		t.Fatalf("Partitions() = %d, want 3", got)
	}
	want := partlog.Info{BeginSeq: 0, LastSeq: -1, LastOffset: -1, LastEnqueuedTime: 0, Empty: true}
	for p := range 3 {
		if got := mustInfo(t, l, p); got != want {
			t.Errorf("Info(%d) = %+v, want %+v", p, got, want)
		}
		recs, err := l.Read(p, 0, 10, 0, nil)
		if err != nil || len(recs) != 0 {
			t.Errorf("Read(%d) on empty partition = %d records, %v", p, len(recs), err)
		}
		for _, off := range []int64{-1, 0, 1 << 40} {
			if seq, err := l.SeekOffset(p, off); err != nil || seq != 0 {
				t.Errorf("SeekOffset(%d, %d) = %d, %v; want 0", p, off, seq, err)
			}
		}
		for _, ts := range []int64{0, time.Now().UnixMilli()} {
			if seq, err := l.SeekTime(p, ts); err != nil || seq != 0 {
				t.Errorf("SeekTime(%d, %d) = %d, %v; want 0", p, ts, seq, err)
			}
		}
	}
}

func testAppendRead(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 2)
	ctx := testCtx(t)
	const n = 200
	var entries []partlog.Entry
	var payloads [][]byte
	for i := range n {
		pl := payload(uint64(i), []int{0, 1, 8, 100, 256, 4000}[i%6])
		before := time.Now().UnixMilli()
		e, err := l.Append(ctx, 1, pl)
		after := time.Now().UnixMilli()
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if e.Seq != int64(i) {
			t.Fatalf("Append %d: seq %d, want %d", i, e.Seq, i)
		}
		if e.EnqueuedTime < before || e.EnqueuedTime > after {
			t.Errorf("Append %d: enqueued time %d not within [%d, %d]", i, e.EnqueuedTime, before, after)
		}
		if i == 0 && e.Offset < 0 {
			t.Errorf("first offset %d is negative", e.Offset)
		}
		if i > 0 {
			prev := entries[i-1]
			if e.Offset <= prev.Offset {
				t.Errorf("offset %d of seq %d not above %d", e.Offset, e.Seq, prev.Offset)
			}
			if e.EnqueuedTime < prev.EnqueuedTime {
				t.Errorf("enqueued time of seq %d goes back: %d < %d", e.Seq, e.EnqueuedTime, prev.EnqueuedTime)
			}
		}
		// An acknowledged record is readable at once.
		recs, err := l.Read(1, e.Seq, 1, 0, nil)
		if err != nil || len(recs) != 1 || recs[0].Entry != e || !bytes.Equal(recs[0].Payload, pl) {
			t.Fatalf("Read right after Append %d: %v, %+v", i, err, recs)
		}
		entries = append(entries, e)
		payloads = append(payloads, pl)
	}
	recs := readAll(t, l, 1, 0)
	if len(recs) != n {
		t.Fatalf("read %d records, want %d", len(recs), n)
	}
	for i, r := range recs {
		if r.Entry != entries[i] || !bytes.Equal(r.Payload, payloads[i]) {
			t.Fatalf("record %d = %+v (%d bytes), want %+v (%d bytes)", i, r.Entry, len(r.Payload), entries[i], len(payloads[i]))
		}
		if r.Enqueued() != time.UnixMilli(r.EnqueuedTime).UTC() {
			t.Fatalf("Enqueued() of %d does not match EnqueuedTime", i)
		}
	}
	last := entries[n-1]
	want := partlog.Info{BeginSeq: 0, LastSeq: last.Seq, LastOffset: last.Offset, LastEnqueuedTime: last.EnqueuedTime}
	if got := mustInfo(t, l, 1); got != want {
		t.Errorf("Info(1) = %+v, want %+v", got, want)
	}
	if got := mustInfo(t, l, 0); !got.Empty || got.LastSeq != -1 {
		t.Errorf("partition 0 is not untouched: %+v", got)
	}
}

func testPayloadCopied(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	buf := payload(7, 64)
	orig := bytes.Clone(buf)
	res := make(chan error, 1)
	if err := l.AppendAsync(0, buf, func(_ partlog.Entry, err error) { res <- err }); err != nil {
		t.Fatal(err)
	}
	for i := range buf { // the caller reuses its buffer at once
		buf[i] = 0xEE
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-testCtx(t).Done():
		t.Fatal("append not completed")
	}
	recs := readAll(t, l, 0, 0)
	if len(recs) != 1 || !bytes.Equal(recs[0].Payload, orig) {
		t.Fatalf("stored payload changed with the caller's buffer: %x", recs)
	}
	// The payload returned by Read belongs to the caller.
	recs[0].Payload[0] ^= 0xFF
	again := readAll(t, l, 0, 0)
	if !bytes.Equal(again[0].Payload, orig) {
		t.Fatal("modifying a read payload changed the log")
	}
}

// fill appends n records of sizes from sizes to partition p and returns
// their entries and payloads.
func fill(t *testing.T, l partlog.Log, p, n int, sizes []int) ([]partlog.Entry, [][]byte) {
	t.Helper()
	ctx := testCtx(t)
	var es []partlog.Entry
	var ps [][]byte
	for i := range n {
		pl := payload(uint64(i), sizes[i%len(sizes)])
		e, err := l.Append(ctx, p, pl)
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		es = append(es, e)
		ps = append(ps, pl)
	}
	return es, ps
}

func testReadBounds(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	es, ps := fill(t, l, 0, 50, []int{10, 300, 50})
	tests := []struct {
		name       string
		from       int64
		maxRecords int
		maxBytes   int
		wantFirst  int64 // -1: no records
		wantMax    int   // most records allowed
	}{
		{"negative from", -5, 100, 0, 0, 50},
		{"from middle", 20, 100, 0, 20, 30},
		{"from last", 49, 100, 0, 49, 1},
		{"from end", 50, 100, 0, -1, 0},
		{"far beyond end", 1 << 50, 100, 0, -1, 0},
		{"one record", 10, 1, 0, 10, 1},
		{"zero records", 10, 0, 0, -1, 0},
		{"maxBytes below one payload", 1, 100, 5, 1, 1},
		{"maxBytes of three payloads", 0, 100, 10 + 300 + 50, 0, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := l.Read(0, tc.from, tc.maxRecords, tc.maxBytes, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantFirst < 0 {
				if len(recs) != 0 {
					t.Fatalf("got %d records, want none", len(recs))
				}
				return
			}
			if len(recs) == 0 || len(recs) > tc.wantMax {
				t.Fatalf("got %d records, want 1..%d", len(recs), tc.wantMax)
			}
			total := 0
			for i, r := range recs {
				j := tc.wantFirst + int64(i)
				if r.Entry != es[j] || !bytes.Equal(r.Payload, ps[j]) {
					t.Fatalf("record %d = %+v, want %+v", i, r.Entry, es[j])
				}
				total += len(r.Payload)
			}
			if tc.maxBytes > 0 && len(recs) > 1 && total > tc.maxBytes {
				t.Fatalf("%d payload bytes over maxBytes %d", total, tc.maxBytes)
			}
		})
	}
	t.Run("appends to dst", func(t *testing.T) {
		dst := []partlog.Record{{Payload: []byte("keep")}}
		recs, err := l.Read(0, 3, 2, 0, dst)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) < 2 || string(recs[0].Payload) != "keep" || recs[1].Seq != 3 {
			t.Fatalf("Read did not append to dst: %+v", recs)
		}
	})
}

func testSeekOffset(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	es, _ := fill(t, l, 0, 300, []int{0, 17, 256, 1000, 5})
	next := int64(len(es))
	check := func(off, want int64) {
		t.Helper()
		got, err := l.SeekOffset(0, off)
		if err != nil || got != want {
			t.Fatalf("SeekOffset(%d) = %d, %v; want %d", off, got, err, want)
		}
	}
	check(-1, 0)
	check(es[0].Offset, 0)
	for i, e := range es {
		check(e.Offset, e.Seq)
		// Between two records: the next one.
		if i+1 < len(es) && es[i+1].Offset > e.Offset+1 {
			check(e.Offset+1, e.Seq+1)
			check(es[i+1].Offset-1, e.Seq+1)
		}
	}
	check(es[len(es)-1].Offset+1, next)
	check(1<<62, next)
}

func testSeekTime(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	ctx := testCtx(t)
	var es []partlog.Entry
	// Rounds of appends separated by a clock tick give records with
	// several distinct times, some of them shared.
	for round := range 6 {
		for i := range 1 + round*7 {
			e, err := l.Append(ctx, 0, payload(uint64(i), 40+i))
			if err != nil {
				t.Fatal(err)
			}
			es = append(es, e)
		}
		last := es[len(es)-1].EnqueuedTime
		for time.Now().UnixMilli() <= last {
			time.Sleep(100 * time.Microsecond) // poll: the clock must pass last
		}
	}
	next := int64(len(es))
	firstAtOrAfter := func(ts int64) int64 {
		for _, e := range es {
			if e.EnqueuedTime >= ts {
				return e.Seq
			}
		}
		return next
	}
	distinct := 0
	for i, e := range es {
		if i > 0 && e.EnqueuedTime == es[i-1].EnqueuedTime {
			continue
		}
		distinct++
		for _, ts := range []int64{e.EnqueuedTime - 1, e.EnqueuedTime, e.EnqueuedTime + 1} {
			got, err := l.SeekTime(0, ts)
			if want := firstAtOrAfter(ts); err != nil || got != want {
				t.Fatalf("SeekTime(%d) = %d, %v; want %d", ts, got, err, want)
			}
		}
	}
	if distinct < 6 {
		t.Fatalf("only %d distinct enqueued times over 6 rounds", distinct)
	}
	for _, ts := range []int64{0, es[len(es)-1].EnqueuedTime + 1, 1 << 60} {
		got, err := l.SeekTime(0, ts)
		if want := firstAtOrAfter(ts); err != nil || got != want {
			t.Fatalf("SeekTime(%d) = %d, %v; want %d", ts, got, err, want)
		}
	}
}

func testConcurrentAppendAsync(t *testing.T, open func(*testing.T, int) partlog.Log) {
	const (
		parts      = 4
		goroutines = 8
		perG       = 400
	)
	l := openLog(t, open, parts)
	type ack struct {
		key uint64
		e   partlog.Entry
	}
	var (
		mu    sync.Mutex
		acks  = make([][]ack, parts)
		calls atomic.Int64
		fails atomic.Int64
		all   sync.WaitGroup
	)
	all.Add(goroutines * perG)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				key := uint64(g<<32 | i)
				p := (g + i) % parts
				var once atomic.Bool
				err := l.AppendAsync(p, payload(key, 8+i%50), func(e partlog.Entry, err error) {
					if once.Swap(true) {
						t.Errorf("done called twice for key %x", key)
						return
					}
					calls.Add(1)
					if err != nil {
						fails.Add(1)
						t.Errorf("append key %x: %v", key, err)
					} else {
						mu.Lock()
						acks[p] = append(acks[p], ack{key, e})
						mu.Unlock()
					}
					all.Done()
				})
				if err != nil {
					t.Errorf("AppendAsync: %v", err)
					all.Done()
				}
			}
		})
	}
	wg.Wait()
	waitGroup(t, &all)
	if got := calls.Load(); got != goroutines*perG {
		t.Fatalf("%d completions, want %d", got, goroutines*perG)
	}
	for p := range parts {
		bySeq := map[int64]uint64{}
		for _, a := range acks[p] {
			if _, dup := bySeq[a.e.Seq]; dup {
				t.Fatalf("partition %d: seq %d acknowledged twice", p, a.e.Seq)
			}
			bySeq[a.e.Seq] = a.key
		}
		recs := readAll(t, l, p, 0)
		if len(recs) != len(acks[p]) {
			t.Fatalf("partition %d: read %d records, acknowledged %d", p, len(recs), len(acks[p]))
		}
		for i, r := range recs {
			if r.Seq != int64(i) {
				t.Fatalf("partition %d: record %d has seq %d", p, i, r.Seq)
			}
			if key, ok := bySeq[r.Seq]; !ok || keyOf(r.Payload) != key || !bytes.Equal(r.Payload, payload(key, len(r.Payload))) {
				t.Fatalf("partition %d: seq %d holds the wrong payload", p, r.Seq)
			}
			if i > 0 && (r.Offset <= recs[i-1].Offset || r.EnqueuedTime < recs[i-1].EnqueuedTime) {
				t.Fatalf("partition %d: seq %d breaks offset or time order", p, r.Seq)
			}
		}
	}
}

// waitGroup waits for wg with the test's time bound.
func waitGroup(t *testing.T, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-testCtx(t).Done():
		t.Fatal("timed out waiting for completions")
	}
}

func testCallOrder(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 2)
	const n = 2000
	seqs := make([]int64, n)
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		err := l.AppendAsync(1, payload(uint64(i), 16), func(e partlog.Entry, err error) {
			if err != nil {
				t.Errorf("append %d: %v", i, err)
			}
			seqs[i] = e.Seq
			wg.Done()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	waitGroup(t, &wg)
	for i := 1; i < n; i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("append %d got seq %d, not after %d", i, seqs[i], seqs[i-1])
		}
	}
}

func testTailReaders(t *testing.T, open func(*testing.T, int) partlog.Log) {
	const (
		writers = 4
		perW    = 300
		readers = 3
	)
	l := openLog(t, open, 2)
	ctx := testCtx(t)
	total := int64(writers * perW)
	var wg sync.WaitGroup
	errs := make(chan error, readers+writers)
	for r := range readers {
		wg.Go(func() {
			next := int64(0)
			var buf []partlog.Record
			for next < total {
				var err error
				buf, err = l.Read(0, next, 1+r*50, 0, buf[:0])
				if err != nil {
					errs <- fmt.Errorf("reader %d: %w", r, err)
					return
				}
				if len(buf) == 0 {
					if err := l.Wait(ctx, 0, next-1); err != nil {
						errs <- fmt.Errorf("reader %d: Wait after %d: %w", r, next-1, err)
						return
					}
					continue
				}
				for _, rec := range buf {
					if rec.Seq != next {
						errs <- fmt.Errorf("reader %d: got seq %d, want %d", r, rec.Seq, next)
						return
					}
					key := keyOf(rec.Payload)
					if !bytes.Equal(rec.Payload, payload(key, len(rec.Payload))) {
						errs <- fmt.Errorf("reader %d: seq %d has a damaged payload", r, rec.Seq)
						return
					}
					next++
				}
			}
		})
	}
	for w := range writers {
		wg.Go(func() {
			for i := range perW {
				if _, err := l.Append(ctx, 0, payload(uint64(w<<32|i), 8+i%200)); err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func testWait(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 2)
	ctx := testCtx(t)

	// A done context on an empty partition: the context's error, not nil.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := l.Wait(cctx, 0, -1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with cancelled ctx = %v, want context.Canceled", err)
	}

	// A waiter on partition 0 is not released by partition 1, nor by a
	// record it does not wait for; it is by the one it waits for.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	res := make(chan error, 1)
	go func() { res <- l.Wait(wctx, 0, 1) }()
	if _, err := l.Append(ctx, 1, []byte("other partition")); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // seqs 0 and 1: not yet > 1
		if _, err := l.Append(ctx, 0, payload(uint64(i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-res:
		t.Fatalf("Wait(after 1) returned %v with last seq 1", err)
	default:
	}
	if _, err := l.Append(ctx, 0, payload(2, 10)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Wait = %v after seq 2 was appended", err)
		}
	case <-ctx.Done():
		t.Fatal("Wait not released by a new record")
	}

	// Already satisfied: returns at once.
	if err := l.Wait(ctx, 0, 0); err != nil {
		t.Fatalf("Wait(after 0) = %v", err)
	}

	// A waiter that is never satisfied ends with its context.
	go func() { res <- l.Wait(wctx, 1, 5) }()
	wcancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Wait = %v, want context.Canceled", err)
		}
	case <-ctx.Done():
		t.Fatal("Wait ignored its context")
	}
}

func testAppendContext(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, 0, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with cancelled ctx = %v, want context.Canceled", err)
	}
	if info := mustInfo(t, l, 0); !info.Empty || info.LastSeq != -1 {
		t.Fatalf("Append with cancelled ctx stored a record: %+v", info)
	}
}

func testLargePayload(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 1)
	ctx := testCtx(t)
	big := payload(1, 300<<10)
	for i := range 3 {
		if _, err := l.Append(ctx, 0, big); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
	recs := readAll(t, l, 0, 0)
	if len(recs) != 3 {
		t.Fatalf("read %d records, want 3", len(recs))
	}
	for _, r := range recs {
		if !bytes.Equal(r.Payload, big) {
			t.Fatalf("seq %d: large payload damaged", r.Seq)
		}
	}
	// A byte limit below one record still returns that record.
	recs, err := l.Read(0, 1, 10, 1, nil)
	if err != nil || len(recs) != 1 || recs[0].Seq != 1 {
		t.Fatalf("Read with small maxBytes = %d records, %v", len(recs), err)
	}
}

func testMaxPartitions(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, partlog.MaxPartitions)
	ctx := testCtx(t)
	for p := range partlog.MaxPartitions {
		for i := range p % 3 {
			if _, err := l.Append(ctx, p, payload(uint64(p*10+i), 20)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for p := range partlog.MaxPartitions {
		info := mustInfo(t, l, p)
		if info.LastSeq != int64(p%3)-1 || info.Empty != (p%3 == 0) {
			t.Errorf("Info(%d) = %+v after %d appends", p, info, p%3)
		}
		for i, r := range readAll(t, l, p, 0) {
			if keyOf(r.Payload) != uint64(p*10+i) {
				t.Errorf("partition %d seq %d holds another partition's record", p, r.Seq)
			}
		}
	}
}

func testInvalidPartition(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := openLog(t, open, 2)
	ctx := testCtx(t)
	for _, p := range []int{-1, 2, 1 << 20} {
		checkErr(t, fmt.Sprintf("partition %d", p), partlog.ErrInvalidPartition, allOps(ctx, l, p))
	}
}

// allOps calls every partition operation once and returns their errors.
func allOps(ctx context.Context, l partlog.Log, p int) map[string]error {
	errs := map[string]error{}
	errs["AppendAsync"] = l.AppendAsync(p, []byte("x"), nil)
	_, errs["Append"] = l.Append(ctx, p, []byte("x"))
	_, errs["Read"] = l.Read(p, 0, 1, 0, nil)
	_, errs["SeekOffset"] = l.SeekOffset(p, 0)
	_, errs["SeekTime"] = l.SeekTime(p, 0)
	_, errs["Info"] = l.Info(p)
	errs["Wait"] = l.Wait(ctx, p, -1)
	return errs
}

func checkErr(t *testing.T, what string, want error, errs map[string]error) {
	t.Helper()
	for op, err := range errs {
		if !errors.Is(err, want) {
			t.Errorf("%s: %s = %v, want %v", what, op, err, want)
		}
	}
}

func testClose(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := open(t, 2)
	ctx := testCtx(t)
	if _, err := l.Append(ctx, 0, []byte("before close")); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- l.Wait(ctx, 1, -1) }()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, partlog.ErrClosed) {
			t.Fatalf("Wait blocked across Close = %v, want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not release a waiter")
	}
	checkErr(t, "after Close", partlog.ErrClosed, allOps(ctx, l, 0))
	if err := l.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

func testCloseCompletesPending(t *testing.T, open func(*testing.T, int) partlog.Log) {
	l := open(t, 2)
	const n = 3000
	var calls, oks atomic.Int64
	for i := range n {
		err := l.AppendAsync(i%2, payload(uint64(i), 100), func(_ partlog.Entry, err error) {
			calls.Add(1)
			if err == nil {
				oks.Add(1)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := calls.Load(); got != n {
		t.Fatalf("%d of %d completions ran before Close returned", got, n)
	}
	t.Logf("%d of %d records committed by Close", oks.Load(), n)
}
