package jsc2d_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/store/c2d"
	"amqphub/store/c2d/jsc2d"
)

// lastSeq is the bucket's last revision: how many writes it took.
func lastSeq(t *testing.T, js jetstream.JetStream, bucket string) uint64 {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}

// TestGroupCommit settles many locked messages of one queue at once: every
// settlement succeeds, each produces its feedback record, and they share
// writes instead of taking one each.
func TestGroupCommit(t *testing.T) {
	js := newJS(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		inline int
	}{
		{"inline bodies", 0},
		{"stream bodies", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := uniqueBucket()
			s := open(t, js, jsc2d.Options{Bucket: bucket, InlineBodyBytes: tc.inline, Config: c2d.Config{ManualSweep: true}})
			defer s.Close()
			const n = 40
			for i := range n {
				if _, err := s.Enqueue(ctx, "dev", c2d.NewMessage{MessageID: fmt.Sprint(i), Ack: c2d.AckFull, Body: []byte("body")}); err != nil {
					t.Fatal(err)
				}
			}
			var tokens []c2d.LockToken
			for i := range n {
				m, ok, err := s.Lock(ctx, "dev")
				if err != nil || !ok || string(m.Body) != "body" || m.MessageID != fmt.Sprint(i) {
					t.Fatalf("Lock %d = %q %q, %v, %v", i, m.MessageID, m.Body, ok, err)
				}
				tokens = append(tokens, m.LockToken)
			}
			before := lastSeq(t, js, bucket)
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i, tok := range tokens {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = s.Complete(ctx, "dev", tok)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("Complete %d: %v", i, err)
				}
			}
			writes := lastSeq(t, js, bucket) - before
			t.Logf("%d concurrent settlements, %d writes", n, writes)
			if writes > n/2 {
				t.Errorf("%d concurrent settlements took %d writes; want them to share writes", n, writes)
			}
			if c, err := s.Pending(ctx, "dev"); err != nil || c != (c2d.Counts{}) {
				t.Errorf("Pending = %+v, %v; want none", c, err)
			}
			if got, err := s.PendingFeedback(ctx); err != nil || got != n {
				t.Errorf("PendingFeedback = %d, %v; want %d", got, err, n)
			}
			b, ok, err := s.TakeFeedback(ctx, 2*n)
			if err != nil || !ok || len(b.Records) != n {
				t.Fatalf("TakeFeedback = %d records, %v, %v; want %d", len(b.Records), ok, err, n)
			}
			// The settlements raced, so the records come in their order.
			seen := map[string]bool{}
			for _, r := range b.Records {
				if r.Status != c2d.StatusSuccess || seen[r.OriginalMessageID] {
					t.Errorf("record %s %v: want one Success per message", r.OriginalMessageID, r.Status)
				}
				seen[r.OriginalMessageID] = true
			}
		})
	}
}
