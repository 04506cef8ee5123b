package jetstream

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/internal/natstest"
	"amqphub/store/partlog"
)

// streamLeader returns the server name of the stream's leader, polling
// until one is elected.
func streamLeader(t *testing.T, nc *nats.Conn, stream string) string {
	t.Helper()
	js := natstest.JetStream(t, nc)
	var leader string
	waitFor(t, "a leader of "+stream, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return false
		}
		if ci := s.CachedInfo().Cluster; ci != nil {
			leader = ci.Leader
		}
		return leader != ""
	})
	return leader
}

// TestCluster runs a Log on R3 streams of a real 3-node cluster of
// nats-server processes: reads right after appends through a follower,
// waiters woken across nodes, and then the stream leader SIGKILLed during
// a stream of appends, after which every acknowledged record must be
// there with the number and payload it was acknowledged with.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster and waits out a leader election (about 20 s)")
	}
	c := natstest.StartCluster(t, 3)
	stream, subject := uniquePrefix()
	opts := Options{
		Partitions:    2,
		StreamPrefix:  stream,
		SubjectPrefix: subject,
		Replicas:      3,
		// A leader loss takes one Raft election (seconds): appends sent to
		// the dead leader fail after this, the rest go on.
		AckTimeout:     4 * time.Second,
		RequestTimeout: 4 * time.Second,
		MaxInFlight:    256,
	}
	setup := natstest.Connect(t, c.URLs())
	first := openTest(t, setup, opts)
	leader0 := streamLeader(t, setup, first.streamName(0))
	t.Logf("stream leaders: partition 0 on %s, partition 1 on %s", leader0, streamLeader(t, setup, first.streamName(1)))

	// One Log per node, as one hub node each.
	logs := make([]*Log, len(c.Nodes))
	for i, nd := range c.Nodes {
		logs[i] = openTest(t, natstest.Connect(t, nd.ClientURL()), opts)
	}

	t.Run("ReadYourWrites", func(t *testing.T) {
		// Every node appends and reads at once, whether its server leads
		// the stream, follows it, or lags a little.
		for i, l := range logs {
			for k := range 30 {
				pl := []byte{byte(i), byte(k)}
				e := mustAppend(t, l, 1, pl)
				recs, err := l.Read(1, e.Seq, 1, 0, nil)
				if err != nil || len(recs) != 1 || recs[0].Entry != e || !bytes.Equal(recs[0].Payload, pl) {
					t.Fatalf("node %d: Read right after Append %+v = %+v, %v", i, e, recs, err)
				}
			}
		}
	})

	t.Run("WaitAcrossNodes", func(t *testing.T) {
		ctx := testCtx(t)
		info := mustInfo(t, logs[1], 1)
		res := make(chan error, 1)
		go func() { res <- logs[1].Wait(ctx, 1, info.LastSeq) }()
		e := mustAppend(t, logs[2], 1, []byte("wake"))
		select {
		case err := <-res:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("waiter on node 2 not woken by an append on node 3")
		}
		if got := mustInfo(t, logs[1], 1); got.LastSeq != e.Seq || got.LastEnqueuedTime != e.EnqueuedTime {
			t.Fatalf("Info on node 2 = %+v, appended %+v on node 3", got, e)
		}
	})

	t.Run("LeaderKilled", func(t *testing.T) {
		// The appending node is one whose server survives, so that the
		// test measures the stream's failover and not a client reconnect.
		victim := c.Index(leader0)
		app := logs[(victim+1)%len(logs)]
		const (
			beforeKill = 3000 // appends sent before the kill
			afterGoal  = 500  // acknowledgements per partition wanted after it
			perTick    = 20   // paced at 20 per 10 ms, a steady 2,000 per second
		)
		type ack struct {
			key uint64
			e   partlog.Entry
		}
		var (
			mu        sync.Mutex
			acks      = make([][]ack, opts.Partitions)
			afterKill = make([]int, opts.Partitions)
			sent      int
			failed    atomic.Int64
			all       sync.WaitGroup
			killedAt  time.Time
		)
		goalMet := func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, n := range afterKill {
				if n < afterGoal {
					return false
				}
			}
			return true
		}
		start := time.Now()
		deadline := start.Add(45 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for killedAt.IsZero() || !goalMet() {
			if time.Now().After(deadline) {
				t.Fatalf("after %v: %d sent, %d failed, acknowledged after the kill per partition %v",
					time.Since(start), sent, failed.Load(), afterKill)
			}
			<-tick.C
			for range perTick {
				if sent == beforeKill {
					c.Kill(victim)
					killedAt = time.Now()
				}
				i := sent
				sent++
				p := i % opts.Partitions
				var pl [64]byte
				binary.LittleEndian.PutUint64(pl[:], uint64(i))
				all.Add(1)
				err := app.AppendAsync(p, pl[:], func(e partlog.Entry, err error) {
					defer all.Done()
					if err != nil {
						failed.Add(1)
						return
					}
					mu.Lock()
					acks[p] = append(acks[p], ack{uint64(i), e})
					if i >= beforeKill {
						afterKill[p]++
					}
					mu.Unlock()
				})
				if err != nil {
					all.Done()
					t.Fatalf("AppendAsync %d: %v", i, err)
				}
			}
		}
		all.Wait()
		t.Logf("%d appends in %v; leader of partition 0 (%s) killed after %d; recovered %v after the kill: %d acknowledged, %d failed",
			sent, time.Since(start).Round(time.Millisecond), leader0, beforeKill,
			time.Since(killedAt).Round(time.Millisecond), sent-int(failed.Load()), failed.Load())

		// Read back through a survivor other than the appender.
		reader := logs[(victim+2)%len(logs)]
		stored := make([][]partlog.Record, opts.Partitions)
		for p := range opts.Partitions {
			recs := readAll(t, reader, p, 0)
			bySeq := map[int64]partlog.Record{}
			for i, r := range recs {
				if i > 0 && r.Seq != recs[i-1].Seq+1 {
					t.Fatalf("partition %d: seq %d follows %d", p, r.Seq, recs[i-1].Seq)
				}
				bySeq[r.Seq] = r
			}
			as := acks[p]
			slices.SortFunc(as, func(a, b ack) int { return cmp.Compare(a.key, b.key) })
			for i, a := range as {
				r, ok := bySeq[a.e.Seq]
				if !ok {
					t.Fatalf("partition %d: acknowledged seq %d (key %d) lost", p, a.e.Seq, a.key)
				}
				if r.Entry != a.e || binary.LittleEndian.Uint64(r.Payload) != a.key {
					t.Fatalf("partition %d: seq %d holds %+v key %d, acknowledged %+v key %d",
						p, a.e.Seq, r.Entry, binary.LittleEndian.Uint64(r.Payload), a.e, a.key)
				}
				// One appender: acknowledged records keep call order.
				if i > 0 && a.e.Seq <= as[i-1].e.Seq {
					t.Fatalf("partition %d: key %d got seq %d, not after key %d's %d", p, a.key, a.e.Seq, as[i-1].key, as[i-1].e.Seq)
				}
			}
			t.Logf("partition %d: %d records stored, %d acknowledged", p, len(recs), len(as))
			stored[p] = recs
		}

		// The killed node comes back, catches up, and a Log connected to
		// it reads the same records as the survivors.
		c.Start(victim)
		back := openTest(t, natstest.Connect(t, c.Nodes[victim].ClientURL()), opts)
		for p := range opts.Partitions {
			waitFor(t, "the restarted node to serve the same records", func() bool {
				got := readAll(t, back, p, 0)
				if len(got) != len(stored[p]) {
					return false
				}
				for i := range got {
					if got[i].Entry != stored[p][i].Entry || !bytes.Equal(got[i].Payload, stored[p][i].Payload) {
						t.Fatalf("partition %d: restarted node reads %+v at %d, survivor %+v", p, got[i].Entry, i, stored[p][i].Entry)
					}
				}
				return true
			})
		}
	})
}
