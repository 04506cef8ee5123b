package jskv_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/jskv"
	"amqphub/internal/natstest"
)

func TestGetFromLeader(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "B", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	put := func(key, val string) uint64 {
		rev, err := kv.Put(ctx, key, []byte(val))
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	put("a", "one")
	revA := put("a", "two")
	put("b", "x")
	if err := kv.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx) // the delete marker is the stream's last message
	if err != nil {
		t.Fatal(err)
	}
	markerRev := st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq

	for _, tc := range []struct {
		key   string
		found bool
		want  jskv.Record
	}{
		{"a", true, jskv.Record{Value: []byte("two"), Revision: revA}},
		{"b", true, jskv.Record{Revision: markerRev, Deleted: true}},
		{"c", false, jskv.Record{}},
	} {
		rec, found, err := jskv.GetFromLeader(ctx, nc, "B", tc.key)
		if err != nil {
			t.Fatalf("%s: %v", tc.key, err)
		}
		if found != tc.found || string(rec.Value) != string(tc.want.Value) || rec.Revision != tc.want.Revision || rec.Deleted != tc.want.Deleted {
			t.Errorf("%s: %+v found %v; want %+v found %v", tc.key, rec, found, tc.want, tc.found)
		}
	}
	if _, _, err := jskv.GetFromLeader(ctx, nc, "NOSUCH", "a"); err == nil {
		t.Error("a bucket that does not exist: no error")
	}
}

func TestIsConflict(t *testing.T) {
	srv := natstest.RunServer(t)
	nc := natstest.Connect(t, srv.ClientURL())
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "C"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	_, errCreate := kv.Create(ctx, "k", []byte("again"))
	_, errUpdate := kv.Update(ctx, "k", []byte("old"), rev+10)
	m := nats.NewMsg("$KV.C.k")
	_, errPublish := js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev+10))
	_, errOther := kv.Get(ctx, "missing")
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"create of an existing key", errCreate, true},
		{"update at an old revision", errUpdate, true},
		{"publish with a wrong expected sequence", errPublish, true},
		{"key not found", errOther, false},
		{"nil", nil, false},
	} {
		if got := jskv.IsConflict(tc.err); got != tc.want {
			t.Errorf("%s (%v): IsConflict = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
