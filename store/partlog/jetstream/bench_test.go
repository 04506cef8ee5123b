package jetstream

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/partlog"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// benchConn starts an embedded server for one benchmark and connects to it
// over loopback TCP ("tcp") or in-process ("inprocess", no socket).
func benchConn(b *testing.B, mode string, mods ...func(*server.Options)) *nats.Conn {
	s := natstest.RunServer(b, mods...)
	var nc *nats.Conn
	var err error
	if mode == "inprocess" {
		nc, err = nats.Connect("", nats.InProcessServer(s))
	} else {
		nc, err = nats.Connect(s.ClientURL())
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

func benchOpen(b *testing.B, nc *nats.Conn, o Options) *Log {
	o.Logger = discardLogger()
	if o.StreamPrefix == "" {
		o.StreamPrefix, o.SubjectPrefix = uniquePrefix()
	}
	l, err := Open(context.Background(), nc, o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close() })
	return l
}

// BenchmarkAppendAsync is the hub's ingest pattern, as in the seglog
// benchmark of the same name: one producer keeps 4096 appends of 256 bytes
// in flight over 4 partitions (1024 per partition). It reports msgs/s and
// append-to-ack latency. The server uses its default sync policy (fsync
// every 2 minutes), so an ack does not mean fsynced.
func BenchmarkAppendAsync(b *testing.B) {
	for _, mode := range []string{"tcp", "inprocess"} {
		b.Run(mode, func(b *testing.B) {
			nc := benchConn(b, mode)
			l := benchOpen(b, nc, Options{Partitions: 4})
			benchAppendAsync(b, l, 4, 4096, 256)
		})
	}
	b.Run("tcp-memory", func(b *testing.B) {
		nc := benchConn(b, "tcp")
		l := benchOpen(b, nc, Options{Partitions: 4, Storage: jetstream.MemoryStorage})
		benchAppendAsync(b, l, 4, 4096, 256)
	})
	b.Run("tcp-raw-nats", benchRawPublishAsync)
}

// benchRawPublishAsync is the baseline without this package: nats.go's
// own PublishAsync with 4096 acknowledgements pending, to the same four
// streams (as Open made them), over TCP, no enqueued-time prefix.
func benchRawPublishAsync(b *testing.B) {
	nc := benchConn(b, "tcp")
	l := benchOpen(b, nc, Options{Partitions: 4})
	js := natstest.JetStream(b, nc, jetstream.WithPublishAsyncMaxPending(4096))
	payload := make([]byte, 256)
	b.SetBytes(256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := js.PublishAsync(l.subject(i%4), payload); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("acknowledgements missing")
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func benchAppendAsync(b *testing.B, l *Log, parts, inflight, size int) {
	payload := make([]byte, size)
	sem := make(chan struct{}, inflight)
	lat := make([]int64, b.N)
	var nlat atomic.Int64
	epoch := time.Now()
	// Per-partition rings of start times: acknowledgements of a partition
	// arrive in order, on the log's acknowledgement goroutine.
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

// BenchmarkAppendUnloaded is one append at a time: ns/op is the latency of
// a lone append (publish, store, acknowledgement).
func BenchmarkAppendUnloaded(b *testing.B) {
	nc := benchConn(b, "tcp")
	l := benchOpen(b, nc, Options{Partitions: 1})
	payload := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := l.Append(context.Background(), 0, payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendParallel has 256 goroutines each calling the blocking
// Append (256 bytes) on one of 4 partitions.
func BenchmarkAppendParallel(b *testing.B) {
	nc := benchConn(b, "tcp")
	l := benchOpen(b, nc, Options{Partitions: 4})
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

// Read fixture: one partition of benchRecords 256-byte records appended at
// full speed with the real clock (so the server's time index is a good
// guess for SeekTime, as in production), built once per run over TCP.
const benchRecords = 200_000

var benchFixture struct {
	once sync.Once
	dir  string
	srv  *server.Server
	nc   *nats.Conn
	l    *Log
	es   []partlog.Entry
	err  error
}

func readFixture(b *testing.B) (*Log, []partlog.Entry) {
	f := &benchFixture
	f.once.Do(func() {
		if f.dir, f.err = os.MkdirTemp("", "jetstream-bench-"); f.err != nil {
			return
		}
		if f.srv, f.err = natstest.StartServer(f.dir); f.err != nil {
			return
		}
		if f.nc, f.err = nats.Connect(f.srv.ClientURL()); f.err != nil {
			return
		}
		f.l, f.err = Open(context.Background(), f.nc, Options{Partitions: 1, StreamPrefix: "BENCH_", SubjectPrefix: "bench", Logger: discardLogger()})
		if f.err != nil {
			return
		}
		f.es = make([]partlog.Entry, benchRecords)
		payload := make([]byte, 256)
		sem := make(chan struct{}, 1024)
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
	f := &benchFixture
	if f.l != nil {
		_ = f.l.Close()
	}
	if f.nc != nil {
		f.nc.Close()
	}
	if f.srv != nil {
		f.srv.Shutdown()
		f.srv.WaitForShutdown()
	}
	if f.dir != "" {
		_ = os.RemoveAll(f.dir)
	}
	os.Exit(code)
}

// BenchmarkRead reads the fixture sequentially through Read (batched
// direct gets); one op is one record.
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

// BenchmarkReadOrderedConsumer reads the same fixture with a JetStream
// ordered consumer (the alternative read path), to compare with
// BenchmarkRead; one op is one record.
func BenchmarkReadOrderedConsumer(b *testing.B) {
	readFixture(b)
	js := natstest.JetStream(b, benchFixture.nc)
	b.SetBytes(256)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; {
		cons, err := js.OrderedConsumer(context.Background(), "BENCH_0", jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		want := min(b.N-n, benchRecords)
		got := 0
		it, err := cons.Messages(jetstream.PullMaxMessages(1000))
		if err != nil {
			b.Fatal(err)
		}
		for got < want {
			m, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if len(m.Data()) != recordPrefix+256 {
				b.Fatalf("record of %d bytes", len(m.Data()))
			}
			got++
		}
		it.Stop()
		n += got
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSeek measures one seek (or a one-record read, or Info) at
// random positions of the fixture; ns/op is the latency.
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
	b.Run("info", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if _, err := l.Info(0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkClusterAppendAsync is BenchmarkAppendAsync against a 3-node
// cluster of nats-server processes on this machine (R3 streams, and R1 for
// comparison), the client connected to one node.
func BenchmarkClusterAppendAsync(b *testing.B) {
	c := natstest.StartCluster(b, 3)
	for _, r := range []int{3, 1} {
		b.Run("R"+strconv.Itoa(r), func(b *testing.B) {
			nc := natstest.Connect(b, c.Nodes[0].ClientURL())
			l := benchOpen(b, nc, Options{Partitions: 4, Replicas: r})
			benchAppendAsync(b, l, 4, 4096, 256)
		})
	}
	b.Run("R3-unloaded", func(b *testing.B) {
		nc := natstest.Connect(b, c.Nodes[0].ClientURL())
		l := benchOpen(b, nc, Options{Partitions: 1, Replicas: 3})
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
