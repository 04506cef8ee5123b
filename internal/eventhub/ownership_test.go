package eventhub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/amqptest"
	"amqphub/internal/auth"
	"amqphub/internal/server"
)

// TestAttachRefusals: every bad attach gets a clear AMQP error at once.
func TestAttachRefusals(t *testing.T) {
	s := server.StartTest(t, nil)
	seed(t, s.Log, 0, 3, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	hubName := s.Options.EventHubName
	tests := []struct {
		name   string
		addr   string
		filter string
		want   goamqp.ErrCond
		desc   string // substring of the description
	}{
		{"unknown consumer group", partitionAddr(s, "nosuchgroup", 0), "", goamqp.ErrCondNotFound, "nosuchgroup"},
		{"partition out of range", partitionAddr(s, "$Default", 4), "", goamqp.ErrCondNotFound, "partition"},
		{"partition not a number", hubName + "/ConsumerGroups/$Default/Partitions/x", "", goamqp.ErrCondNotFound, "partition"},
		{"partition with a leading zero", hubName + "/ConsumerGroups/$Default/Partitions/01", "", goamqp.ErrCondNotFound, "partition"},
		{"unknown annotation", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-foo > '1'", goamqp.ErrCondNotAllowed, "x-opt-foo"},
		{"not an annotation", partitionAddr(s, "$Default", 0), "sys.offset > 1", goamqp.ErrCondNotAllowed, "selector"},
		{"unsupported operator", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-offset < '5'", goamqp.ErrCondNotAllowed, "operator"},
		{"not a number", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-sequence-number > 'abc'", goamqp.ErrCondNotAllowed, "integer"},
		{"garbage after the value", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-offset > 5 or 1=1", goamqp.ErrCondNotAllowed, "one number"},
		{"sequence beyond the end", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-sequence-number > '5'", "com.microsoft:argument-out-of-range", "last sequence number"},
		{"sequence beyond the end, inclusive", partitionAddr(s, "$Default", 0), "amqp.annotation.x-opt-sequence-number >= '4'", "com.microsoft:argument-out-of-range", "last sequence number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := newReceiver(ctx, sess, tc.addr, rcvOpts{filter: tc.filter})
			if err == nil {
				r.Close(ctx)
				t.Fatalf("attach accepted, want %s", tc.want)
			}
			if condOf(err) != tc.want || !strings.Contains(err.Error(), tc.desc) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.want, tc.desc)
			}
		})
	}
	// The last event is a valid inclusive start.
	r, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 0), rcvOpts{filter: "amqp.annotation.x-opt-sequence-number >= '3'"})
	if err != nil {
		t.Fatalf("start just past the last event: %v", err)
	}
	r.Close(ctx)

	t.Run("producer", func(t *testing.T) {
		for _, addr := range []string{hubName, hubName + "/Partitions/0"} {
			snd, err := sess.NewSender(ctx, addr, nil)
			if err == nil {
				snd.Close(ctx)
				t.Fatalf("%s: producer accepted", addr)
			}
			if condOf(err) != goamqp.ErrCondNotAllowed || !strings.Contains(err.Error(), "read-only") {
				t.Fatalf("%s: %v, want %s (read-only)", addr, err, goamqp.ErrCondNotAllowed)
			}
		}
	})
	t.Run("epoch of the wrong type", func(t *testing.T) {
		_, err := sess.NewReceiver(ctx, partitionAddr(s, "$Default", 0), &goamqp.ReceiverOptions{Properties: map[string]any{"com.microsoft:epoch": "seven"}})
		if condOf(err) != goamqp.ErrCondNotAllowed || !strings.Contains(err.Error(), "epoch") {
			t.Fatalf("got %v, want %s about the epoch", err, goamqp.ErrCondNotAllowed)
		}
	})
	t.Run("service policy without a token for the entity", func(t *testing.T) {
		// registryRead has no ServiceConnect: the hub refuses before the endpoint.
		c, err := goamqp.Dial(ctx, "amqp://"+s.AMQPAddr, &goamqp.ConnOptions{
			SASLType: goamqp.SASLTypePlain("registryRead@sas.root."+s.Options.HubName, policyToken(t, s.Options.HostName, "registryRead", auth.DevRegistryReadPrimaryKey)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = newReceiver(ctx, newSession(t, c), partitionAddr(s, "$Default", 0), rcvOpts{})
		if condOf(err) != goamqp.ErrCondUnauthorizedAccess {
			t.Fatalf("got %v, want %s", err, goamqp.ErrCondUnauthorizedAccess)
		}
	})
}

func i64(v int64) *int64 { return &v }

// detachedWith waits until r's link is detached and returns the error.
func detachedWith(t *testing.T, ctx context.Context, r *goamqp.Receiver) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		_, err := r.Receive(ctx, nil)
		if err != nil {
			return err
		}
	}
}

// TestEpochs: higher (or equal) epochs take a partition, lower ones and
// non-epoch readers are refused while an epoch reader is active, and
// epoch readers displace non-epoch readers.
func TestEpochs(t *testing.T) {
	s := server.StartTest(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Readers on separate connections, as separate processes would be.
	sess := func() *goamqp.Session { return newSession(t, dialOwner(t, s)) }
	addr := partitionAddr(s, "$Default", 1)
	open := func(epoch *int64, name string) (*goamqp.Receiver, error) {
		return newReceiver(ctx, sess(), addr, rcvOpts{filter: "amqp.annotation.x-opt-offset > '@latest'", epoch: epoch, name: name})
	}

	r1, err := open(i64(1), "first")
	if err != nil {
		t.Fatalf("epoch 1: %v", err)
	}
	r2, err := open(i64(2), "second")
	if err != nil {
		t.Fatalf("epoch 2: %v", err)
	}
	if err := detachedWith(t, ctx, r1); condOf(err) != goamqp.ErrCondStolen || !strings.Contains(err.Error(), "'second'") {
		t.Fatalf("epoch 1 reader after epoch 2 attached: %v, want %s naming the new receiver", err, goamqp.ErrCondStolen)
	}
	if _, err := open(i64(1), "late"); condOf(err) != goamqp.ErrCondStolen || !strings.Contains(err.Error(), "higher epoch 2") {
		t.Fatalf("lower epoch: %v, want %s", err, goamqp.ErrCondStolen)
	}
	if _, err := open(nil, "plain"); condOf(err) != goamqp.ErrCondStolen {
		t.Fatalf("non-epoch reader while epoch 2 is active: %v, want %s", err, goamqp.ErrCondStolen)
	}
	// Equal epoch takes over (what the Go processor's load balancing relies on).
	r3, err := open(i64(2), "third")
	if err != nil {
		t.Fatalf("equal epoch: %v", err)
	}
	if err := detachedWith(t, ctx, r2); condOf(err) != goamqp.ErrCondStolen {
		t.Fatalf("epoch 2 reader after another epoch 2: %v, want %s", err, goamqp.ErrCondStolen)
	}
	// The owner still works: it gets new events.
	entries := seed(t, s.Log, 1, 1, 7)
	m, err := r3.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkEvent(t, m, entries[0], 7)
	// Once it leaves, non-epoch readers are welcome again.
	if err := r3.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var plain []*goamqp.Receiver
	amqptest.Eventually(t, 5*time.Second, func() bool {
		r, err := open(nil, "p0")
		if err != nil {
			return false
		}
		plain = append(plain, r)
		return true
	}, "a non-epoch reader is accepted after the epoch reader closed")
	// Other groups and partitions are independent.
	if _, err := newReceiver(ctx, sess(), partitionAddr(s, "$Default", 2), rcvOpts{epoch: i64(0)}); err != nil {
		t.Fatalf("epoch reader on another partition: %v", err)
	}
	// An epoch reader displaces all non-epoch readers.
	for i := 1; i < 3; i++ {
		r, err := open(nil, fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		plain = append(plain, r)
	}
	if _, err := open(i64(0), "owner"); err != nil {
		t.Fatalf("epoch 0 over non-epoch readers: %v", err)
	}
	for i, r := range plain {
		if err := detachedWith(t, ctx, r); condOf(err) != goamqp.ErrCondStolen {
			t.Fatalf("non-epoch reader %d: %v, want %s", i, err, goamqp.ErrCondStolen)
		}
	}
}

// TestReaderLimit: five readers without epoch per partition and group;
// the sixth is refused, naming the connected receivers.
func TestReaderLimit(t *testing.T) {
	s := server.StartTest(t, func(o *server.Options) { o.EventHub.ConsumerGroups = []string{"other"} })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	addr := partitionAddr(s, "$Default", 0)
	var rs []*goamqp.Receiver
	for i := range 5 {
		r, err := newReceiver(ctx, sess, addr, rcvOpts{name: fmt.Sprintf("reader-%d", i)})
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		rs = append(rs, r)
	}
	_, err := newReceiver(ctx, sess, addr, rcvOpts{name: "reader-5"})
	if condOf(err) != goamqp.ErrCondResourceLimitExceeded || !strings.Contains(err.Error(), "'reader-4'") || !strings.Contains(err.Error(), "5") {
		t.Fatalf("sixth reader: %v, want %s listing the readers", err, goamqp.ErrCondResourceLimitExceeded)
	}
	// Another group and another partition have their own limits.
	if _, err := newReceiver(ctx, sess, partitionAddr(s, "other", 0), rcvOpts{}); err != nil {
		t.Fatalf("reader in another group: %v", err)
	}
	if _, err := newReceiver(ctx, sess, partitionAddr(s, "$Default", 1), rcvOpts{}); err != nil {
		t.Fatalf("reader on another partition: %v", err)
	}
	// A slot frees when a reader leaves.
	if err := rs[0].Close(ctx); err != nil {
		t.Fatal(err)
	}
	amqptest.Eventually(t, 5*time.Second, func() bool {
		r, err := newReceiver(ctx, sess, addr, rcvOpts{name: "reader-6"})
		if err == nil {
			rs[0] = r
		}
		return err == nil
	}, "a reader is accepted after one of five left")
}
