package jetstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/partlog"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAppend(t testing.TB, l partlog.Log, p int, payload []byte) partlog.Entry {
	t.Helper()
	e, err := l.Append(testCtx(t), p, payload)
	if err != nil {
		t.Fatalf("Append(%d): %v", p, err)
	}
	return e
}

func mustInfo(t testing.TB, l partlog.Log, p int) partlog.Info {
	t.Helper()
	info, err := l.Info(p)
	if err != nil {
		t.Fatalf("Info(%d): %v", p, err)
	}
	return info
}

func readAll(t testing.TB, l partlog.Log, p int, from int64) []partlog.Record {
	t.Helper()
	var out []partlog.Record
	for {
		n := len(out)
		var err error
		if out, err = l.Read(p, from, 100, 0, out); err != nil {
			t.Fatalf("Read(%d, %d): %v", p, from, err)
		}
		if len(out) == n {
			return out
		}
		from = out[len(out)-1].Seq + 1
	}
}

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // poll: the condition depends on the server
	}
}

func TestOpenOptions(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"negative partitions", Options{Partitions: -1}, "partitions -1"},
		{"too many partitions", Options{Partitions: partlog.MaxPartitions + 1}, "partitions 33"},
		{"stream prefix with dot", Options{Partitions: 1, StreamPrefix: "A.B"}, "stream prefix"},
		{"stream prefix with space", Options{Partitions: 1, StreamPrefix: "A B"}, "stream prefix"},
		{"subject prefix wildcard", Options{Partitions: 1, SubjectPrefix: "a.*"}, "not a literal subject"},
		{"subject prefix empty token", Options{Partitions: 1, SubjectPrefix: "a..b"}, "empty token"},
		{"replicas", Options{Partitions: 1, Replicas: 6}, "replicas 6"},
		{"storage", Options{Partitions: 1, Storage: 7}, "storage type"},
		{"short retention", Options{Partitions: 1, Retention: time.Hour}, "retention"},
		{"long retention", Options{Partitions: 1, Retention: 8 * 24 * time.Hour}, "retention"},
		{"negative retention bytes", Options{Partitions: 1, RetentionBytes: -1}, "retention bytes"},
		{"payload above server limit", Options{Partitions: 1, MaxPayload: 64 << 20}, "exceeds the server's limit"},
		{"negative payload", Options{Partitions: 1, MaxPayload: -1}, "max payload"},
		{"in flight", Options{Partitions: 1, MaxInFlight: -1}, "max in flight"},
		{"in-flight bytes", Options{Partitions: 1, MaxInFlightBytes: -5}, "in-flight bytes"},
		{"ack timeout", Options{Partitions: 1, AckTimeout: -time.Second}, "ack timeout"},
		{"request timeout", Options{Partitions: 1, RequestTimeout: -time.Second}, "request timeout"},
		{"read batch", Options{Partitions: 1, MaxReadBatch: 1 << 30}, "read batch"},
		{"read bytes", Options{Partitions: 1, MaxReadBytes: -1}, "read bytes"},
		{"no stream for partitions 0", Options{StreamPrefix: "NONE_"}, "needs Options.Partitions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Open(testCtx(t), nc, tc.opts)
			if err == nil {
				_ = l.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open error %q does not mention %q", err, tc.want)
			}
		})
	}
	if _, err := Open(testCtx(t), nil, Options{Partitions: 1}); err == nil {
		t.Fatal("Open with a nil connection succeeded")
	}
}

// TestReopen checks that numbering, offsets, times and the partition count
// survive closing the Log and restarting the server.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s := natstest.RunServer(t, func(o *server.Options) { o.StoreDir = dir })
	nc := natstest.Connect(t, s.ClientURL())
	opts := Options{Partitions: 2, StreamPrefix: "RE_", SubjectPrefix: "re"}
	l := openTest(t, nc, opts)
	var es []partlog.Entry
	for i := range 5 {
		es = append(es, mustAppend(t, l, 1, []byte{byte(i)}))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	mismatch := []struct {
		name string
		n    int
	}{{"fewer", 1}, {"more", 3}}
	for _, tc := range mismatch {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			o.Partitions = tc.n
			l, err := Open(testCtx(t), nc, o)
			if !errors.Is(err, partlog.ErrPartitionCountMismatch) {
				if l != nil {
					_ = l.Close()
				}
				t.Fatalf("Open with %d partitions = %v, want ErrPartitionCountMismatch", tc.n, err)
			}
		})
	}

	// Restart the server on the same store.
	nc.Close()
	s.Shutdown()
	s.WaitForShutdown()
	s = natstest.RunServer(t, func(o *server.Options) { o.StoreDir = dir })
	nc = natstest.Connect(t, s.ClientURL())

	o := opts
	o.Partitions = 0 // the recorded count
	l = openTest(t, nc, o)
	if l.Partitions() != 2 {
		t.Fatalf("reopened with %d partitions, want 2", l.Partitions())
	}
	last := es[len(es)-1]
	want := partlog.Info{BeginSeq: 0, LastSeq: last.Seq, LastOffset: last.Offset, LastEnqueuedTime: last.EnqueuedTime}
	if got := mustInfo(t, l, 1); got != want {
		t.Fatalf("Info after restart = %+v, want %+v", got, want)
	}
	e := mustAppend(t, l, 1, []byte("after restart"))
	if e.Seq != last.Seq+1 || e.Offset != (last.Seq+1)*OffsetStride || e.EnqueuedTime < last.EnqueuedTime {
		t.Fatalf("append after restart = %+v, previous %+v", e, last)
	}
	recs := readAll(t, l, 1, 0)
	if len(recs) != 6 {
		t.Fatalf("read %d records, want 6", len(recs))
	}
	for i, r := range recs[:5] {
		if r.Entry != es[i] || !bytes.Equal(r.Payload, []byte{byte(i)}) {
			t.Fatalf("record %d = %+v, want %+v", i, r, es[i])
		}
	}
}

// TestClockGoesBack checks that enqueued times never decrease, neither
// within one Log nor across a reopen with a clock behind the stored times.
func TestClockGoesBack(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	var clock atomic.Int64
	clock.Store(1_000_000)
	now := func() time.Time { return time.UnixMilli(clock.Load()) }
	opts := Options{Partitions: 1, StreamPrefix: "CLK_", SubjectPrefix: "clk", Now: now}
	l := openTest(t, nc, opts)
	e1 := mustAppend(t, l, 0, []byte("a"))
	clock.Store(500_000)
	e2 := mustAppend(t, l, 0, []byte("b"))
	if e1.EnqueuedTime != 1_000_000 || e2.EnqueuedTime != 1_000_000 {
		t.Fatalf("times %d, %d; want both 1000000", e1.EnqueuedTime, e2.EnqueuedTime)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Store(400_000)
	l = openTest(t, nc, opts)
	if e3 := mustAppend(t, l, 0, []byte("c")); e3.EnqueuedTime != 1_000_000 {
		t.Fatalf("time after reopen with an earlier clock = %d, want 1000000", e3.EnqueuedTime)
	}
	clock.Store(2_000_000)
	if e4 := mustAppend(t, l, 0, []byte("d")); e4.EnqueuedTime != 2_000_000 {
		t.Fatalf("time = %d, want 2000000", e4.EnqueuedTime)
	}
	if got, err := l.SeekTime(0, 1_000_001); err != nil || got != 3 {
		t.Fatalf("SeekTime(1000001) = %d, %v; want 3", got, err)
	}
}

// TestRetentionBytes checks partlog's retention semantics when the stream
// drops old records: BeginSeq moves, numbering and offsets continue, reads
// and seeks below BeginSeq land on it.
func TestRetentionBytes(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1, RetentionBytes: 8 << 10})
	var es []partlog.Entry
	for i := range 300 {
		es = append(es, mustAppend(t, l, 0, bytes.Repeat([]byte{byte(i)}, 100)))
	}
	info := mustInfo(t, l, 0)
	last := es[len(es)-1]
	if info.BeginSeq <= 0 || info.BeginSeq > last.Seq || info.LastSeq != last.Seq || info.Empty ||
		info.LastOffset != last.Offset || info.LastEnqueuedTime != last.EnqueuedTime {
		t.Fatalf("Info = %+v after 300 appends with an 8 KiB cap (last %+v)", info, last)
	}
	recs := readAll(t, l, 0, 0)
	if int64(len(recs)) != last.Seq-info.BeginSeq+1 || recs[0].Seq != info.BeginSeq {
		t.Fatalf("read %d records from %d, Info %+v", len(recs), recs[0].Seq, info)
	}
	for _, r := range recs {
		if r.Entry != es[r.Seq] || r.Payload[0] != byte(r.Seq) {
			t.Fatalf("record %d = %+v, want %+v", r.Seq, r.Entry, es[r.Seq])
		}
	}
	checks := []struct {
		name string
		fn   func() (int64, error)
		want int64
	}{
		{"SeekOffset(0)", func() (int64, error) { return l.SeekOffset(0, 0) }, info.BeginSeq},
		{"SeekOffset(expired)", func() (int64, error) { return l.SeekOffset(0, es[1].Offset) }, info.BeginSeq},
		{"SeekOffset(retained)", func() (int64, error) { return l.SeekOffset(0, es[info.BeginSeq+3].Offset) }, info.BeginSeq + 3},
		{"SeekTime(0)", func() (int64, error) { return l.SeekTime(0, 0) }, info.BeginSeq},
		{"SeekTime(first)", func() (int64, error) { return l.SeekTime(0, es[0].EnqueuedTime) }, info.BeginSeq},
		{"SeekTime(after last)", func() (int64, error) { return l.SeekTime(0, last.EnqueuedTime+1) }, last.Seq + 1},
	}
	for _, c := range checks {
		if got, err := c.fn(); err != nil || got != c.want {
			t.Errorf("%s = %d, %v; want %d", c.name, got, err, c.want)
		}
	}
	if e := mustAppend(t, l, 0, []byte("next")); e.Seq != last.Seq+1 {
		t.Fatalf("append after retention got seq %d, want %d", e.Seq, last.Seq+1)
	}
}

// TestRetentionAge lets every record expire and checks the empty-partition
// rules of partlog.Info, with and without the Log's cached last record.
func TestRetentionAge(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	stream, subject := uniquePrefix()
	opts := Options{Partitions: 1, StreamPrefix: stream, SubjectPrefix: subject, maxAge: 300 * time.Millisecond}
	l := openTest(t, nc, opts)
	var last partlog.Entry
	for i := range 5 {
		last = mustAppend(t, l, 0, []byte{byte(i)})
	}
	waitFor(t, "records to expire", func() bool { return mustInfo(t, l, 0).Empty })
	want := partlog.Info{BeginSeq: last.Seq + 1, LastSeq: last.Seq, LastOffset: last.Offset, LastEnqueuedTime: last.EnqueuedTime, Empty: true}
	if got := mustInfo(t, l, 0); got != want {
		t.Fatalf("Info after expiry = %+v, want %+v", got, want)
	}
	if recs := readAll(t, l, 0, 0); len(recs) != 0 {
		t.Fatalf("read %d expired records", len(recs))
	}
	for _, f := range []func() (int64, error){
		func() (int64, error) { return l.SeekOffset(0, 0) },
		func() (int64, error) { return l.SeekTime(0, 0) },
		func() (int64, error) { return l.SeekTime(0, last.EnqueuedTime) },
	} {
		if got, err := f(); err != nil || got != last.Seq+1 {
			t.Fatalf("seek on an expired partition = %d, %v; want %d", got, err, last.Seq+1)
		}
	}

	// A Log that never saw the last record falls back to the stream's
	// timestamp, taken a moment after the stamp.
	fresh := openTest(t, nc, opts)
	got := mustInfo(t, fresh, 0)
	if got.BeginSeq != want.BeginSeq || got.LastSeq != want.LastSeq || got.LastOffset != want.LastOffset || !got.Empty ||
		got.LastEnqueuedTime < last.EnqueuedTime || got.LastEnqueuedTime > last.EnqueuedTime+1000 {
		t.Fatalf("Info of a fresh Log after expiry = %+v, want %+v (time within 1 s after)", got, want)
	}
	if e := mustAppend(t, fresh, 0, []byte("again")); e.Seq != last.Seq+1 || e.EnqueuedTime < got.LastEnqueuedTime {
		t.Fatalf("append after expiry = %+v, want seq %d", e, last.Seq+1)
	}
}

// TestTwoLogs runs two Logs on the same streams through two connections,
// as two hub nodes would: they share numbering, see each other's records
// and wake each other's waiters.
func TestTwoLogs(t *testing.T) {
	s := natstest.RunServer(t)
	stream, subject := uniquePrefix()
	opts := Options{Partitions: 2, StreamPrefix: stream, SubjectPrefix: subject}
	a := openTest(t, natstest.Connect(t, s.ClientURL()), opts)
	b := openTest(t, natstest.Connect(t, s.ClientURL()), opts)
	ctx := testCtx(t)

	woke := make(chan error, 1)
	go func() { woke <- b.Wait(ctx, 1, -1) }()
	e := mustAppend(t, a, 1, []byte("from a"))
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("Wait on b = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("b's waiter not woken by a's append")
	}
	recs := readAll(t, b, 1, 0)
	if len(recs) != 1 || recs[0].Entry != e || string(recs[0].Payload) != "from a" {
		t.Fatalf("b read %+v, want a's record %+v", recs, e)
	}

	// Concurrent appends from both: one numbering, no duplicates, no gaps.
	const n = 500
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[int64]string{}
	for _, l := range []*Log{a, b} {
		wg.Add(n)
		for i := range n {
			key := fmt.Sprintf("%p-%d", l, i)
			err := l.AppendAsync(0, []byte(key), func(e partlog.Entry, err error) {
				defer wg.Done()
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if prev, dup := seen[e.Seq]; dup {
					t.Errorf("seq %d acknowledged for %s and %s", e.Seq, prev, key)
				}
				seen[e.Seq] = key
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	for _, l := range []*Log{a, b} {
		recs := readAll(t, l, 0, 0)
		if len(recs) != 2*n {
			t.Fatalf("read %d records, want %d", len(recs), 2*n)
		}
		for i, r := range recs {
			if r.Seq != int64(i) || string(r.Payload) != seen[r.Seq] {
				t.Fatalf("record %d: seq %d payload %q, acknowledged %q", i, r.Seq, r.Payload, seen[r.Seq])
			}
		}
	}
	if ia, ib := mustInfo(t, a, 0), mustInfo(t, b, 0); ia != ib {
		t.Fatalf("Info differs between nodes: %+v and %+v", ia, ib)
	}
}

// TestForeignMessages checks that messages published to a partition's
// subject by something else than a Log (no record prefix, or too short for
// one) are read whole, with the stream's time.
func TestForeignMessages(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1})
	js := natstest.JetStream(t, nc)
	ctx := testCtx(t)
	foreign := [][]byte{[]byte("plain text"), {recordMagic, 1, 2, 3}, {}}
	before := time.Now().UnixMilli()
	for _, pl := range foreign {
		if _, err := js.Publish(ctx, l.subject(0), pl); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now().UnixMilli()
	e := mustAppend(t, l, 0, []byte("ours"))
	recs := readAll(t, l, 0, 0)
	if len(recs) != 4 || recs[3].Entry != e || string(recs[3].Payload) != "ours" {
		t.Fatalf("read %+v", recs)
	}
	for i, r := range recs[:3] {
		if !bytes.Equal(r.Payload, foreign[i]) {
			t.Errorf("seq %d: payload %q, want %q", r.Seq, r.Payload, foreign[i])
		}
		if r.EnqueuedTime < before || r.EnqueuedTime > after {
			t.Errorf("seq %d: time %d not the stream's timestamp within [%d, %d]", r.Seq, r.EnqueuedTime, before, after)
		}
	}
	if info := mustInfo(t, l, 0); info.LastSeq != 3 {
		t.Fatalf("Info = %+v", info)
	}
}

func TestPayloadTooLarge(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1, MaxPayload: 100})
	if err := l.AppendAsync(0, make([]byte, 101), func(partlog.Entry, error) { t.Error("done called") }); !errors.Is(err, partlog.ErrPayloadTooLarge) {
		t.Fatalf("AppendAsync(101 bytes) = %v, want ErrPayloadTooLarge", err)
	}
	if _, err := l.Append(testCtx(t), 0, make([]byte, 100)); err != nil {
		t.Fatalf("Append(100 bytes) = %v", err)
	}
	// The default limit follows the server's max_payload.
	d := openTest(t, nc, Options{Partitions: 1})
	if want := int(nc.MaxPayload()) - recordPrefix; d.maxPayload != want {
		t.Fatalf("default max payload %d, want %d", d.maxPayload, want)
	}
	if _, err := d.Append(testCtx(t), 0, make([]byte, d.maxPayload)); err != nil {
		t.Fatalf("Append of the largest payload: %v", err)
	}
}

// TestServerGone checks that appends whose acknowledgement never comes
// fail once, after AckTimeout, and that Close does not hang.
func TestServerGone(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 4, AckTimeout: 300 * time.Millisecond, RequestTimeout: 300 * time.Millisecond})
	mustAppend(t, l, 0, []byte("stored"))
	// Watchers on every partition, whose consumers Close tries to delete.
	for p := range 4 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := l.Wait(ctx, p, 100); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait = %v", err)
		}
	}
	waitFor(t, "the watchers to start", func() bool {
		for _, p := range l.parts {
			p.watch.mu.Lock()
			started := p.watch.cc != nil
			p.watch.mu.Unlock()
			if !started {
				return false
			}
		}
		return true
	})
	s.Shutdown()
	s.WaitForShutdown()
	waitFor(t, "the client to notice", func() bool { return !nc.IsConnected() })

	var calls atomic.Int32
	res := make(chan error, 1)
	err := l.AppendAsync(0, []byte("lost"), func(_ partlog.Entry, err error) {
		calls.Add(1)
		res <- err
	})
	if err != nil {
		t.Fatalf("AppendAsync while reconnecting = %v (the client buffers it)", err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, ErrAckTimeout) {
			t.Fatalf("done = %v, want ErrAckTimeout", err)
		}
	case <-testCtx(t).Done():
		t.Fatal("append never completed")
	}
	if _, err := l.Read(0, 0, 10, 0, nil); err == nil {
		t.Fatal("Read without a server succeeded")
	}
	if _, err := l.Info(0); err == nil {
		t.Fatal("Info without a server succeeded")
	}
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("done called %d times", n)
	}
}

// TestStreamDeleted checks the error when the partition's stream vanished
// under the Log.
func TestStreamDeleted(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1, AckTimeout: 2 * time.Second})
	js := natstest.JetStream(t, nc)
	if err := js.DeleteStream(testCtx(t), l.streamName(0)); err != nil {
		t.Fatal(err)
	}
	_, err := l.Append(testCtx(t), 0, []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "no responders") {
		t.Fatalf("Append to a deleted stream = %v, want a no-responders error", err)
	}
	if _, err := l.Info(0); err == nil || !strings.Contains(err.Error(), "stream not found") {
		t.Fatalf("Info of a deleted stream = %v", err)
	}
}

// TestWaitClose checks that a waiter is not released by a record it does
// not wait for, and is by Close.
func TestWaitClose(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1})
	ctx := testCtx(t)
	res := make(chan error, 1)
	go func() { res <- l.Wait(ctx, 0, 10) }()
	mustAppend(t, l, 0, []byte("one"))
	select {
	case err := <-res:
		t.Fatalf("Wait(after 10) returned %v with one record", err)
	default:
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, partlog.ErrClosed) {
			t.Fatalf("Wait across Close = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not release the waiter")
	}
}

// TestSeekTimeClocks checks SeekTime against a scan of every record when
// the appender's clock is ahead of, behind, or equal to the server's, so
// that the server's time index is a wrong, a useless or a good first
// guess, and with records appended in bursts (many per millisecond).
func TestSeekTimeClocks(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	tests := []struct {
		name   string
		offset time.Duration // appender clock minus server clock
		fake   bool          // a clock that ticks 1 ms every 3 reads
	}{
		{"ahead", time.Hour, true},
		{"behind", -time.Hour, true},
		{"same fake", 0, true},
		{"real", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var reads atomic.Int64
			base := time.Now().Add(tc.offset)
			now := func() time.Time {
				if !tc.fake {
					return time.Now()
				}
				return base.Add(time.Duration(reads.Add(1)/3) * time.Millisecond)
			}
			l := openTest(t, nc, Options{Partitions: 1, Now: now})
			const n = 300
			es := make([]partlog.Entry, n)
			var wg sync.WaitGroup
			wg.Add(n)
			for i := range n {
				err := l.AppendAsync(0, []byte{byte(i)}, func(e partlog.Entry, err error) {
					defer wg.Done()
					if err != nil {
						t.Error(err)
						return
					}
					es[e.Seq] = e
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			wg.Wait()
			firstAtOrAfter := func(ts int64) int64 {
				for _, e := range es {
					if e.EnqueuedTime >= ts {
						return e.Seq
					}
				}
				return n
			}
			for i, e := range es {
				if i > 0 && e.EnqueuedTime == es[i-1].EnqueuedTime {
					continue
				}
				for _, ts := range []int64{e.EnqueuedTime - 1, e.EnqueuedTime, e.EnqueuedTime + 1} {
					got, err := l.SeekTime(0, ts)
					if want := firstAtOrAfter(ts); err != nil || got != want {
						t.Fatalf("SeekTime(%d) = %d, %v; want %d", ts, got, err, want)
					}
				}
			}
			for _, ts := range []int64{-5, 0, 1, es[n-1].EnqueuedTime + 1, maxHintMillis + 1, 1 << 62} {
				got, err := l.SeekTime(0, ts)
				if want := firstAtOrAfter(ts); err != nil || got != want {
					t.Fatalf("SeekTime(%d) = %d, %v; want %d", ts, got, err, want)
				}
			}
		})
	}
}

// TestLeaderGet checks the message-get path that Read and the seeks fall
// back on when a lagging replica answers a direct get.
func TestLeaderGet(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 1})
	es := []partlog.Entry{mustAppend(t, l, 0, []byte("zero")), mustAppend(t, l, 0, []byte("one"))}
	p := l.parts[0]
	tests := []struct {
		name      string
		jsSeq     uint64
		next      bool
		wantFound bool
		want      int // index into es
	}{
		{"exact", 2, false, true, 1},
		{"next from below", 0, true, true, 0},
		{"next from first", 1, true, true, 0},
		{"missing", 3, false, false, 0},
		{"next past end", 3, true, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, found, err := p.leaderGet(tc.jsSeq, tc.next)
			if err != nil || found != tc.wantFound {
				t.Fatalf("leaderGet(%d, %v) = found %v, %v", tc.jsSeq, tc.next, found, err)
			}
			if !found {
				return
			}
			if got := rec.record(); got.Entry != es[tc.want] || string(got.Payload) != []string{"zero", "one"}[tc.want] {
				t.Fatalf("leaderGet(%d, %v) = %+v %q, want %+v", tc.jsSeq, tc.next, got.Entry, got.Payload, es[tc.want])
			}
		})
	}
}

// TestReopenLimits checks that reopening applies new retention limits to
// existing streams and refuses what JetStream cannot change.
func TestReopenLimits(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	stream, subject := uniquePrefix()
	opts := Options{Partitions: 1, StreamPrefix: stream, SubjectPrefix: subject}
	l := openTest(t, nc, opts)
	e := mustAppend(t, l, 0, []byte("kept"))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	js := natstest.JetStream(t, nc)

	o := opts
	o.RetentionBytes, o.Retention = 1<<20, 48*time.Hour
	l = openTest(t, nc, o)
	st, err := js.Stream(testCtx(t), stream+"0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := st.CachedInfo().Config; cfg.MaxBytes != 1<<20 || cfg.MaxAge != 48*time.Hour {
		t.Fatalf("limits after reopen: MaxBytes %d, MaxAge %v", cfg.MaxBytes, cfg.MaxAge)
	}
	if recs := readAll(t, l, 0, 0); len(recs) != 1 || recs[0].Entry != e {
		t.Fatalf("records after a limits update: %+v", recs)
	}

	tests := []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"storage", func(o *Options) { o.Storage = jetstream.MemoryStorage }, "cannot change"},
		{"replicas on one server", func(o *Options) { o.Replicas = 3 }, "update stream"},
		{"subject", func(o *Options) { o.SubjectPrefix = subject + "x" }, "captures"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := opts
			tc.mod(&o)
			l, err := Open(testCtx(t), nc, o)
			if err == nil {
				_ = l.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}

	// A stream of the same name that this package did not create.
	if _, err := js.CreateStream(testCtx(t), jetstream.StreamConfig{Name: "FOREIGN_0", Subjects: []string{"foreign.0"}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1} {
		l, err := Open(testCtx(t), nc, Options{Partitions: n, StreamPrefix: "FOREIGN_", SubjectPrefix: "foreign"})
		if err == nil || !strings.Contains(err.Error(), "not created by this log") {
			if l != nil {
				_ = l.Close()
			}
			t.Fatalf("Open over a foreign stream (partitions %d) = %v", n, err)
		}
	}
}
