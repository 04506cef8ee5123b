package seglog

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"amqphub/store/partlog"
)

// BenchmarkAppendAsync is the hub's ingest pattern: one producer keeps
// 4096 appends of 256 bytes in flight over 4 partitions, fsync before
// every acknowledgement. It reports msgs/s and append-to-ack latency.
func BenchmarkAppendAsync(b *testing.B) {
	for _, bc := range []struct {
		name   string
		window time.Duration
	}{
		{"adaptive", 0},
		{"window=500us", 500 * time.Microsecond},
		{"window=1ms", time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) { benchAppendAsync(b, 4, 4096, 256, bc.window) })
	}
}

func benchAppendAsync(b *testing.B, parts, inflight, size int, window time.Duration) {
	l, err := Open(b.TempDir(), Options{Partitions: parts, BatchWindow: window, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	payload := make([]byte, size)
	sem := make(chan struct{}, inflight)
	lat := make([]int64, b.N)
	var nlat atomic.Int64
	epoch := time.Now()
	// Per-partition rings of start times: a partition completes its
	// appends in order, from its committer goroutine only.
	starts := make([][]int64, parts)
	heads := make([]int, parts)
	tails := make([]int, parts)
	dones := make([]func(partlog.Entry, error), parts)
	for p := range parts {
		starts[p] = make([]int64, inflight)
		dones[p] = func(_ partlog.Entry, err error) {
			if err != nil {
				b.Error(err)
			}
			s := starts[p][tails[p]%inflight]
			tails[p]++
			lat[nlat.Add(1)-1] = int64(time.Since(epoch)) - s
			<-sem
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		p := i % parts
		sem <- struct{}{}
		starts[p][heads[p]%inflight] = int64(time.Since(epoch))
		heads[p]++
		if err := l.AppendAsync(p, payload, dones[p]); err != nil {
			b.Fatal(err)
		}
	}
	for range inflight {
		sem <- struct{}{}
	}
	b.StopTimer()
	reportLatency(b, lat[:nlat.Load()])
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func reportLatency(b *testing.B, lat []int64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
}

// BenchmarkAppendParallel has 256 goroutines each calling the blocking
// Append (256 bytes) on one of 4 partitions.
func BenchmarkAppendParallel(b *testing.B) {
	l, err := Open(b.TempDir(), Options{Partitions: 4, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var gid atomic.Int64
	b.SetParallelism(128) // × GOMAXPROCS (2) = 256 goroutines
	b.SetBytes(256)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		p := int(gid.Add(1)) % 4
		payload := make([]byte, 256)
		for pb.Next() {
			if _, err := l.Append(context.Background(), p, payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkAppendUnloaded is one append at a time: ns/op is the latency
// of a lone append (one write plus fdatasync, plus the window if any).
func BenchmarkAppendUnloaded(b *testing.B) {
	for _, bc := range []struct {
		name   string
		window time.Duration
	}{
		{"adaptive", 0},
		{"window=1ms", time.Millisecond},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l, err := Open(b.TempDir(), Options{Partitions: 1, BatchWindow: bc.window, Logger: discardLogger()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			payload := make([]byte, 256)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := l.Append(context.Background(), 0, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Read fixture: one partition of benchRecords 256-byte records in 16 MiB
// segments, one enqueued millisecond per batch, built once per run.
const benchRecords = 200_000

var benchFixture struct {
	once sync.Once
	dir  string
	l    *Log
	es   []partlog.Entry
	err  error
}

func readFixture(b *testing.B) (*Log, []partlog.Entry) {
	f := &benchFixture
	f.once.Do(func() {
		f.dir, f.err = os.MkdirTemp("", "seglog-bench-")
		if f.err != nil {
			return
		}
		var tick atomic.Int64
		base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		f.l, f.err = Open(f.dir, Options{
			Partitions:  1,
			SegmentSize: 16 << 20,
			Logger:      discardLogger(),
			Now:         func() time.Time { return base.Add(time.Duration(tick.Add(1)) * time.Millisecond) },
		})
		if f.err != nil {
			return
		}
		f.es = make([]partlog.Entry, benchRecords)
		payload := make([]byte, 256)
		sem := make(chan struct{}, 4096)
		var failed atomic.Pointer[error]
		for range benchRecords {
			sem <- struct{}{}
			f.err = f.l.AppendAsync(0, payload, func(e partlog.Entry, err error) {
				if err != nil {
					failed.Store(&err)
				} else {
					f.es[e.Seq] = e
				}
				<-sem
			})
			if f.err != nil {
				return
			}
		}
		for range cap(sem) {
			sem <- struct{}{}
		}
		if err := failed.Load(); err != nil {
			f.err = *err
		}
	})
	if f.err != nil {
		b.Fatal(f.err)
	}
	return f.l, f.es
}

func TestMain(m *testing.M) {
	code := m.Run()
	if f := &benchFixture; f.l != nil {
		_ = f.l.Close()
	}
	if benchFixture.dir != "" {
		_ = os.RemoveAll(benchFixture.dir)
	}
	os.Exit(code)
}

// BenchmarkRead reads the fixture sequentially in batches; one op is one
// record.
func BenchmarkRead(b *testing.B) {
	l, _ := readFixture(b)
	for _, batch := range []int{1, 100, 1000} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			var recs []partlog.Record
			from := int64(0)
			b.SetBytes(256)
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; n < b.N; {
				var err error
				recs, err = l.Read(0, from, min(batch, b.N-n), 0, recs[:0])
				if err != nil || len(recs) == 0 {
					b.Fatalf("Read(%d): %d records, %v", from, len(recs), err)
				}
				n += len(recs)
				from = recs[len(recs)-1].Seq + 1
				if from >= benchRecords {
					from = 0
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkSeek measures one seek (and a one-record read) at random
// positions of the fixture; ns/op is the latency.
func BenchmarkSeek(b *testing.B) {
	l, es := readFixture(b)
	r := rand.New(rand.NewPCG(1, 1))
	first, last := es[0].EnqueuedTime, es[len(es)-1].EnqueuedTime
	b.Run("time", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := l.SeekTime(0, first+r.Int64N(last-first+1)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("offset", func(b *testing.B) {
		end := es[len(es)-1].Offset
		b.ReportAllocs()
		for range b.N {
			if _, err := l.SeekOffset(0, r.Int64N(end+1)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seq-read1", func(b *testing.B) {
		var recs []partlog.Record
		b.ReportAllocs()
		for range b.N {
			var err error
			recs, err = l.Read(0, r.Int64N(benchRecords), 1, 0, recs[:0])
			if err != nil || len(recs) != 1 {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpen reopens a partition of a few hundred small sealed segments
// (32 MB; the "segments" metric gives the count), with their index files
// (the normal case) and without them (every sealed segment scanned, as a
// log without index files would have to).
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	o := Options{Partitions: 1, SegmentSize: 64 << 10, Logger: discardLogger()}
	l, err := Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 256)
	sem := make(chan struct{}, 1024)
	for range 500 * (64 << 10) / 280 {
		sem <- struct{}{}
		if err := l.AppendAsync(0, payload, func(partlog.Entry, error) { <-sem }); err != nil {
			b.Fatal(err)
		}
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	l.Close()
	for _, withIdx := range []bool{true, false} {
		name := "index-files"
		if !withIdx {
			name = "scan"
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				if !withIdx {
					b.StopTimer()
					idx, _ := filepath.Glob(filepath.Join(dir, "p00", "*"+idxSuffix))
					for _, f := range idx {
						_ = os.Remove(f)
					}
					b.StartTimer()
				}
				l, err := Open(dir, o)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				l.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(len(segFilesB(b, dir))), "segments")
		})
	}
}

func segFilesB(b *testing.B, dir string) []string {
	m, err := filepath.Glob(filepath.Join(dir, "p00", "*"+segSuffix))
	if err != nil {
		b.Fatal(err)
	}
	return m
}
