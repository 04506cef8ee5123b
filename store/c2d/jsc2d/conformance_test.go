package jsc2d_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/natstest"
	"amqphub/store/c2d"
	"amqphub/store/c2d/c2dtest"
	"amqphub/store/c2d/jsc2d"
)

// hubStore is c2dsvc.Store's method set (internal/c2dsvc asserts it too;
// the copy keeps this package's tests independent of the feature's).
type hubStore interface {
	c2d.Store
	Release(ctx context.Context, queueID string, token c2d.LockToken) error
	Generations(ctx context.Context) (map[string][]string, error)
	DropGenerations(ctx context.Context, queueID, keep string) (int, error)
	AvailableFeedback(ctx context.Context) (int, error)
}

var _ hubStore = (*jsc2d.Store)(nil)

var bucketSeq atomic.Int64

// newJS starts a server for the test and returns a JetStream context on it.
func newJS(t testing.TB) jetstream.JetStream {
	t.Helper()
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv.ClientURL())
	natstest.WaitJetStream(t, nc)
	js := natstest.JetStream(t, nc)
	return js
}

func uniqueBucket() string { return fmt.Sprintf("T%d_c2d", bucketSeq.Add(1)) }

func open(t testing.TB, js jetstream.JetStream, opts jsc2d.Options) *jsc2d.Store {
	t.Helper()
	s, err := jsc2d.Open(context.Background(), js, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// TestConformance runs the suite with small bodies inline in the queue
// value (the default) and with every body in the bodies stream.
func TestConformance(t *testing.T) {
	js := newJS(t)
	for _, tc := range []struct {
		name   string
		inline int
	}{
		{"inline", 0},
		{"stream", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c2dtest.Run(t, func(t *testing.T, cfg c2d.Config) (c2d.Store, func() c2d.Store) {
				opts := jsc2d.Options{Bucket: uniqueBucket(), NodeID: "n1", InlineBodyBytes: tc.inline, Config: cfg}
				cur := open(t, js, opts)
				t.Cleanup(func() {
					if err := cur.Close(); err != nil {
						t.Errorf("Close: %v", err)
					}
				})
				return cur, func() c2d.Store {
					t.Helper()
					if err := cur.Close(); err != nil {
						t.Fatalf("Close before reopen: %v", err)
					}
					cur = open(t, js, opts)
					return cur
				}
			})
		})
	}
}
