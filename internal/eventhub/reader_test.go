package eventhub_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/server"
	"amqphub/store/partlog"
)

// receiveN receives n events and returns them.
func receiveN(t *testing.T, ctx context.Context, r *goamqp.Receiver, n int) []*goamqp.Message {
	t.Helper()
	out := make([]*goamqp.Message, 0, n)
	for len(out) < n {
		m, err := r.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("receive %d of %d: %v", len(out)+1, n, err)
		}
		out = append(out, m)
	}
	return out
}

// nextIsNew appends one event and checks that it is the next thing r
// receives: nothing the reader should have skipped comes first.
func nextIsNew(t *testing.T, ctx context.Context, s *server.Server, r *goamqp.Receiver, part, index int) partlog.Entry {
	t.Helper()
	e := seed(t, s.Log, part, 1, index)
	m, err := r.Receive(ctx, nil)
	if err != nil {
		t.Fatalf("receive the new event %d: %v", index, err)
	}
	checkEvent(t, m, e[0], index)
	return e[0]
}

// TestSeedServiceFlow is the service read path as the IoT Hub SDKs run it:
// attach to /messages/events, follow the redirect to the
// Event-Hub-compatible endpoint over AMQPS, and read the events after N.
func TestSeedServiceFlow(t *testing.T) {
	s := server.StartTest(t, nil)
	entries := seed(t, s.Log, 0, 20, 0)
	seed(t, s.Log, 1, 5, 100) // another partition must not leak in
	const n = 11
	filter := fmt.Sprintf("amqp.annotation.x-opt-sequence-number > '%d'", n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sess := newSession(t, dialOwner(t, s))
	r, err := newReceiver(ctx, sess, "/messages/events/ConsumerGroups/$Default/Partitions/0", rcvOpts{filter: filter})
	if err == nil {
		_, err = r.Receive(ctx, nil)
	}
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != goamqp.ErrCondLinkRedirect {
		t.Fatalf("attach to /messages/events: got %v, want an amqp:link:redirect", err)
	}
	info := le.RemoteErr.Info
	host, _ := info["network-host"].(string)
	address, _ := info["address"].(string)
	port := 0
	switch p := info["port"].(type) {
	case int32:
		port = int(p)
	case int64:
		port = int(p)
	}
	if host == "" || address == "" || port == 0 {
		t.Fatalf("redirect info incomplete: %#v", info)
	}

	c2 := dial(t, "amqps://"+net.JoinHostPort(host, strconv.Itoa(port)), s.ClientTLS, s)
	rr, err := newReceiver(ctx, newSession(t, c2), address, rcvOpts{filter: filter, credit: -1})
	if err != nil {
		t.Fatalf("attach to redirected %s: %v", address, err)
	}
	if err := rr.IssueCredit(100); err != nil {
		t.Fatal(err)
	}
	got := receiveN(t, ctx, rr, 20-n-1)
	for i, m := range got {
		checkEvent(t, m, entries[n+1+i], n+1+i)
	}
	nextIsNew(t, ctx, s, rr, 0, 20)
}

// TestStartPositions checks every selector form against a seeded
// partition: the first event delivered and that nothing else follows.
func TestStartPositions(t *testing.T) {
	s := server.StartTest(t, nil)
	// Two batches a clock tick apart, so time filters have a boundary.
	entries := seed(t, s.Log, 2, 15, 0)
	for time.Now().UnixMilli() <= entries[14].EnqueuedTime+1 {
		runtime.Gosched()
	}
	entries = append(entries, seed(t, s.Log, 2, 15, 15)...)
	if entries[15].EnqueuedTime <= entries[14].EnqueuedTime {
		t.Fatalf("enqueued times %d and %d do not increase across the batches", entries[14].EnqueuedTime, entries[15].EnqueuedTime)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	e := func(i int) partlog.Entry { return entries[i] }
	tests := []struct {
		name   string
		filter string
		first  int // index of the first event expected; -1 = only new ones
	}{
		{"no filter starts at the beginning", "", 0},
		{"offset -1", "amqp.annotation.x-opt-offset > '-1'", 0},
		{"offset >", fmt.Sprintf("amqp.annotation.x-opt-offset > '%d'", e(7).Offset), 8},
		{"offset >=", fmt.Sprintf("amqp.annotation.x-opt-offset >= '%d'", e(7).Offset), 7},
		{"offset between events", fmt.Sprintf("amqp.annotation.x-opt-offset >= '%d'", e(7).Offset+1), 8},
		{"sequence >", "amqp.annotation.x-opt-sequence-number > '4'", 5},
		{"sequence >=", "amqp.annotation.x-opt-sequence-number >= '4'", 4},
		{"sequence unquoted, no spaces", "amqp.annotation.x-opt-sequence-number>=4", 4},
		{"sequence upper-case name", "AMQP.ANNOTATION.X-OPT-SEQUENCE-NUMBER > '4'", 5},
		{"sequence last", "amqp.annotation.x-opt-sequence-number > '29'", 30},
		{"sequence -1", "amqp.annotation.x-opt-sequence-number > '-1'", 0},
		{"enqueued time >", fmt.Sprintf("amqp.annotation.x-opt-enqueued-time > '%d'", e(14).EnqueuedTime), 15},
		{"enqueued time >=", fmt.Sprintf("amqp.annotation.x-opt-enqueued-time >= '%d'", e(15).EnqueuedTime), 15},
		{"enqueued time between", fmt.Sprintf("amqp.annotation.x-opt-enqueued-time >= '%d'", e(14).EnqueuedTime+1), 15},
		{"enqueued time 0", "amqp.annotation.x-opt-enqueued-time > '0'", 0},
		{"latest", "amqp.annotation.x-opt-offset > '@latest'", -1},
		{"latest inclusive", "amqp.annotation.x-opt-offset >= '@latest'", -1},
	}
	total := 30 // events in the partition; each case appends one
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 2), rcvOpts{filter: tc.filter})
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			defer r.Close(ctx)
			first := tc.first
			if first < 0 {
				first = total
			}
			for i, m := range receiveN(t, ctx, r, total-first) {
				checkEvent(t, m, entries[first+i], first+i)
			}
			entries = append(entries, nextIsNew(t, ctx, s, r, 2, total))
			total++
		})
	}
}

// TestLiveTail: a reader at the end of the log gets events appended
// after it attached, and only those.
func TestLiveTail(t *testing.T) {
	s := server.StartTest(t, nil)
	seed(t, s.Log, 3, 5, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	r, err := newReceiver(ctx, sess, partitionAddr(s, "$default", 3), rcvOpts{filter: "amqp.annotation.x-opt-offset > '@latest'"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 25; i++ {
		entries := seed(t, s.Log, 3, 1, i)
		m, err := r.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("live event %d: %v", i, err)
		}
		checkEvent(t, m, entries[0], i)
	}
}

// TestDrain: go-amqp's DrainCredit (a drain flow that revokes the
// credit) completes, with events in flight and at the tail, and reading
// resumes afterwards without losing or repeating events.
func TestDrain(t *testing.T) {
	s := server.StartTest(t, nil)
	entries := seed(t, s.Log, 0, 50, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	r, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 0), rcvOpts{credit: -1})
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	take := func(m *goamqp.Message) {
		t.Helper()
		checkEvent(t, m, entries[next], next)
		next++
	}
	// go-amqp folds credit issued just before a drain into the drain's
	// flow, so receive once to know the credit is out.
	if err := r.IssueCredit(40); err != nil {
		t.Fatal(err)
	}
	take(receiveN(t, ctx, r, 1)[0])
	if err := r.DrainCredit(ctx, nil); err != nil {
		t.Fatalf("drain: %v", err)
	}
	for m := r.Prefetched(); m != nil; m = r.Prefetched() {
		take(m)
	}
	if next > 40 {
		t.Fatalf("%d events for 40 credits", next)
	}
	if err := r.IssueCredit(uint32(50 - next)); err != nil {
		t.Fatal(err)
	}
	for _, m := range receiveN(t, ctx, r, 50-next) {
		take(m)
	}
	// At the tail, with credit left: the parked reader answers the drain.
	if err := r.IssueCredit(5); err != nil {
		t.Fatal(err)
	}
	entries = append(entries, nextIsNew(t, ctx, s, r, 0, 50))
	if err := r.DrainCredit(ctx, nil); err != nil {
		t.Fatalf("drain at the tail: %v", err)
	}
	if m := r.Prefetched(); m != nil {
		t.Fatalf("event from an empty tail: %v", m.Annotations)
	}
	if err := r.IssueCredit(1); err != nil {
		t.Fatal(err)
	}
	nextIsNew(t, ctx, s, r, 0, 51)
}

// TestRuntimeMetric: receivers that ask for the runtime metric get the
// partition's end in each event's delivery annotations.
func TestRuntimeMetric(t *testing.T) {
	s := server.StartTest(t, nil)
	entries := seed(t, s.Log, 1, 3, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	r, err := sess.NewReceiver(ctx, partitionAddr(s, "$Default", 1), &goamqp.ReceiverOptions{
		DesiredCapabilities: []string{"com.microsoft:enable-receiver-runtime-metric"},
	})
	if err != nil {
		t.Fatal(err)
	}
	last := entries[2]
	for i, m := range receiveN(t, ctx, r, 3) {
		checkEvent(t, m, entries[i], i)
		da := m.DeliveryAnnotations
		if da["last_enqueued_sequence_number"] != last.Seq || da["last_enqueued_offset"] != fmt.Sprint(last.Offset) {
			t.Fatalf("delivery annotations %#v, want the last event's position", da)
		}
		if tm, ok := da["last_enqueued_time_utc"].(time.Time); !ok || tm.UnixMilli() != last.EnqueuedTime {
			t.Fatalf("last_enqueued_time_utc %#v", da["last_enqueued_time_utc"])
		}
		if _, ok := da["runtime_info_retrieval_time_utc"].(time.Time); !ok {
			t.Fatalf("runtime_info_retrieval_time_utc %#v", da["runtime_info_retrieval_time_utc"])
		}
	}
	// Without the capability there are none.
	plain, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 1), rcvOpts{})
	if err != nil {
		t.Fatal(err)
	}
	if m := receiveN(t, ctx, plain, 1)[0]; m.DeliveryAnnotations != nil {
		t.Fatalf("unrequested delivery annotations %#v", m.DeliveryAnnotations)
	}
}

// TestEventTooLarge: an event larger than the receiver's max-message-size
// detaches the link with amqp:link:message-size-exceeded.
func TestEventTooLarge(t *testing.T) {
	s := server.StartTest(t, nil)
	seed(t, s.Log, 0, 1, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	r, err := sess.NewReceiver(ctx, partitionAddr(s, "$Default", 0), &goamqp.ReceiverOptions{MaxMessageSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Receive(ctx, nil); condOf(err) != goamqp.ErrCondMessageSizeExceeded {
		t.Fatalf("got %v, want %s", err, goamqp.ErrCondMessageSizeExceeded)
	}
}
