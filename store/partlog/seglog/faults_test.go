package seglog

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"amqphub/store/partlog"
)

// faults injects disk failures into segment files.
type faults struct {
	mu        sync.Mutex
	writeErr  error // WriteAt writes half of the data, then fails
	syncErr   error
	truncErr  error
	createErr error // opening with O_CREATE fails
	// decide, if set, is asked before each WriteAt and Sync and may
	// return an error to inject.
	decide func(op string) error
	// gate, if set, makes Sync block until it is closed; entered gets a
	// value each time a Sync starts waiting.
	gate    chan struct{}
	entered chan struct{}
}

func (fl *faults) set(f func(fl *faults)) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	f(fl)
}

func (fl *faults) get() faults {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return faults{writeErr: fl.writeErr, syncErr: fl.syncErr, truncErr: fl.truncErr,
		createErr: fl.createErr, decide: fl.decide, gate: fl.gate, entered: fl.entered}
}

func (fl *faults) open(name string, flag int, perm os.FileMode) (segFile, error) {
	if err := fl.get().createErr; err != nil && flag&os.O_CREATE != 0 {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	f, err := openOSFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{segFile: f, fl: fl}, nil
}

type faultFile struct {
	segFile
	fl *faults
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	c := f.fl.get()
	err := c.writeErr
	if err == nil && c.decide != nil {
		err = c.decide("write")
	}
	if err != nil {
		n, _ := f.segFile.WriteAt(p[:len(p)/2], off)
		return n, err
	}
	return f.segFile.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	c := f.fl.get()
	if c.gate != nil {
		if c.entered != nil {
			c.entered <- struct{}{}
		}
		<-c.gate
	}
	err := c.syncErr
	if err == nil && c.decide != nil {
		err = c.decide("sync")
	}
	if err != nil {
		return err
	}
	return f.segFile.Sync()
}

func (f *faultFile) Truncate(size int64) error {
	if err := f.fl.get().truncErr; err != nil {
		return err
	}
	return f.segFile.Truncate(size)
}

// TestWriteFailures fails writes, syncs, the truncation that discards a
// failed write, and the creation of a new segment, and checks that nothing
// unacknowledged is ever visible or stored and that appends work again
// once the disk does.
func TestWriteFailures(t *testing.T) {
	tests := []struct {
		name    string
		prefill int // 12 records of 324 bytes fill a 4 KiB segment
		inject  func(*faults)
		wantErr []error
	}{
		{"disk full on write", 23, func(fl *faults) { fl.writeErr = syscall.ENOSPC }, []error{syscall.ENOSPC}},
		{"sync fails", 23, func(fl *faults) { fl.syncErr = syscall.EIO }, []error{syscall.EIO}},
		{"write and discard fail", 23, func(fl *faults) { fl.writeErr = syscall.ENOSPC; fl.truncErr = syscall.EIO }, []error{syscall.ENOSPC, syscall.EIO}},
		{"disk full on roll", 24, func(fl *faults) { fl.writeErr = syscall.ENOSPC }, []error{syscall.ENOSPC}},
		{"new segment cannot be created", 24, func(fl *faults) { fl.createErr = syscall.ENOSPC }, []error{syscall.ENOSPC}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fl := &faults{}
			o := Options{Partitions: 1, SegmentSize: MinSegmentSize, openFile: fl.open}
			l := mustOpen(t, dir, o)
			const size = 300
			appendN(t, l, 0, 0, tc.prefill, size)
			before, _ := l.Info(0)

			fl.set(tc.inject)
			for i := range 5 {
				_, err := l.Append(context.Background(), 0, payloadFor(uint64(1000+i), size))
				if !slices.ContainsFunc(tc.wantErr, func(want error) bool { return errors.Is(err, want) }) {
					t.Fatalf("Append under fault = %v, want one of %v", err, tc.wantErr)
				}
			}
			if after, _ := l.Info(0); after != before {
				t.Fatalf("Info changed by failed appends: %+v -> %+v", before, after)
			}
			if recs := readAll(t, l, 0); len(recs) != tc.prefill {
				t.Fatalf("%d records visible after failed appends, want %d", len(recs), tc.prefill)
			}

			fl.set(func(fl *faults) { fl.writeErr, fl.syncErr, fl.truncErr, fl.createErr = nil, nil, nil, nil })
			es := appendN(t, l, 0, uint64(tc.prefill), 30, size)
			if es[0].Seq != int64(tc.prefill) {
				t.Fatalf("first append after recovery got seq %d, want %d", es[0].Seq, tc.prefill)
			}
			if es[0].Offset != before.LastOffset+recHeaderSize+size {
				t.Fatalf("offset %d after failures, want %d", es[0].Offset, before.LastOffset+recHeaderSize+size)
			}
			checkRecords(t, readAll(t, l, 0), 0, 0, size)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			l = mustOpen(t, dir, Options{Partitions: 1, SegmentSize: MinSegmentSize})
			recs := readAll(t, l, 0)
			if len(recs) != tc.prefill+30 {
				t.Fatalf("%d records after reopen, want %d", len(recs), tc.prefill+30)
			}
			checkRecords(t, recs, 0, 0, size)
		})
	}
}

// TestIntermittentFailures runs concurrent appenders while every few
// writes or syncs fail, and checks that the records stored are exactly the
// acknowledged ones, in sequence order, with no gaps.
func TestIntermittentFailures(t *testing.T) {
	dir := t.TempDir()
	var calls atomic.Int64
	fl := &faults{}
	l := mustOpen(t, dir, Options{Partitions: 2, SegmentSize: 8 << 10, openFile: fl.open})
	fl.set(func(fl *faults) {
		fl.decide = func(op string) error {
			switch n := calls.Add(1); {
			case n%7 == 3 && op == "write":
				return syscall.ENOSPC
			case n%11 == 5 && op == "sync":
				return syscall.EIO
			}
			return nil
		}
	})
	var (
		mu    sync.Mutex
		acked = map[int]map[int64]uint64{0: {}, 1: {}}
		nFail atomic.Int64
		wg    sync.WaitGroup
	)
	for g := range 4 {
		wg.Go(func() {
			for i := range 300 {
				key := uint64(g<<20 | i)
				p := i % 2
				e, err := l.Append(context.Background(), p, payloadFor(key, 50+i%100))
				if err != nil {
					if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, syscall.EIO) {
						t.Errorf("unexpected error: %v", err)
					}
					nFail.Add(1)
					continue
				}
				mu.Lock()
				if prev, dup := acked[p][e.Seq]; dup {
					t.Errorf("partition %d: seq %d acknowledged for keys %x and %x", p, e.Seq, prev, key)
				}
				acked[p][e.Seq] = key
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if nFail.Load() == 0 {
		t.Fatal("no failure was injected")
	}
	check := func(l *Log) {
		for p := range 2 {
			recs := readAll(t, l, p)
			if len(recs) != len(acked[p]) {
				t.Fatalf("partition %d: %d records stored, %d acknowledged", p, len(recs), len(acked[p]))
			}
			for i, r := range recs {
				key, ok := acked[p][int64(i)]
				if r.Seq != int64(i) || !ok || !bytes.Equal(r.Payload, payloadFor(key, len(r.Payload))) {
					t.Fatalf("partition %d: record %d (seq %d) is not the acknowledged one", p, i, r.Seq)
				}
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	check(mustOpen(t, dir, Options{Partitions: 2, SegmentSize: 8 << 10}))
	t.Logf("%d appends failed", nFail.Load())
}

// TestOnlyDurableVisible holds a batch inside fsync and checks that
// readers, Info and Wait do not see it until the sync completes.
func TestOnlyDurableVisible(t *testing.T) {
	fl := &faults{}
	l := mustOpen(t, t.TempDir(), Options{Partitions: 1, openFile: fl.open})
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	fl.set(func(fl *faults) { fl.gate, fl.entered = gate, entered })
	acked := make(chan partlog.Entry, 1)
	if err := l.AppendAsync(0, []byte("pending"), func(e partlog.Entry, err error) {
		if err != nil {
			t.Error(err)
		}
		acked <- e
	}); err != nil {
		t.Fatal(err)
	}
	<-entered // the committer is inside fsync
	if info, _ := l.Info(0); !info.Empty || info.LastSeq != -1 {
		t.Fatalf("Info shows an unsynced record: %+v", info)
	}
	if recs, err := l.Read(0, 0, 10, 0, nil); err != nil || len(recs) != 0 {
		t.Fatalf("Read shows %d unsynced records (%v)", len(recs), err)
	}
	waited := make(chan error, 1)
	go func() { waited <- l.Wait(context.Background(), 0, -1) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned %v before the sync", err)
	case <-acked:
		t.Fatal("append acknowledged before the sync")
	default:
	}
	fl.set(func(fl *faults) { fl.gate = nil })
	close(gate)
	e := <-acked
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	recs, err := l.Read(0, 0, 10, 0, nil)
	if err != nil || len(recs) != 1 || recs[0].Entry != e {
		t.Fatalf("after sync: %v %+v", err, recs)
	}
}

// TestBackPressure stalls the disk and checks that the queue stops
// accepting records at MaxQueueBytes, that a blocked Append honours its
// context, and that nothing is lost or duplicated once the disk moves.
func TestBackPressure(t *testing.T) {
	fl := &faults{}
	l := mustOpen(t, t.TempDir(), Options{Partitions: 1, MaxQueueBytes: MinMaxQueueBytes, openFile: fl.open})
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	fl.set(func(fl *faults) { fl.gate, fl.entered = gate, entered })
	const size = 1000 // 1024 bytes queued per record: 4 fill the queue
	var done sync.WaitGroup
	cb := func(_ partlog.Entry, err error) {
		if err != nil {
			t.Error(err)
		}
		done.Done()
	}
	done.Add(5)
	if err := l.AppendAsync(0, payloadFor(0, size), cb); err != nil {
		t.Fatal(err)
	}
	<-entered // record 0 is in fsync; the queue is empty
	for i := 1; i <= 4; i++ {
		if err := l.AppendAsync(0, payloadFor(uint64(i), size), cb); err != nil {
			t.Fatal(err)
		}
	}
	// The queue is full: Append blocks until its deadline. Had it queued
	// the record instead, the record would be stored below.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := l.Append(ctx, 0, payloadFor(5, size)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append on a full queue = %v, want context.DeadlineExceeded", err)
	}
	fl.set(func(fl *faults) { fl.gate = nil })
	close(gate)
	done.Wait()
	recs := readAll(t, l, 0)
	if len(recs) != 5 {
		t.Fatalf("%d records stored, want 5 (the cancelled append must not be queued)", len(recs))
	}
	checkRecords(t, recs, 0, 0, size)
}
