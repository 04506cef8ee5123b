package eventhub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/hub"
	"amqphub/internal/jskv"
)

// kvOpTimeout bounds one key-value operation (or compare-and-set loop):
// attaches and REST calls wait for it.
const kvOpTimeout = 5 * time.Second

// maxCASAttempts bounds compare-and-set retries; conflicts come from other
// nodes writing the same key, which settles within a few rounds.
const maxCASAttempts = 64

// errNoChange tells casUpdate that fn wants nothing written.
var errNoChange = errors.New("no change")

// kvBucket is a bucket with the connection its leader reads go through.
type kvBucket struct {
	jetstream.KeyValue
	nc *nats.Conn
}

// casUpdate reads key (nil value and revision 0 when absent or deleted),
// lets fn compute its new value and writes it only if the key has not
// changed meanwhile, retrying on conflicts. fn also gets the revision it
// read (0: absent). fn may return errNoChange to
// write nothing (casUpdate then returns the revision read and nil) or
// another error to stop. It returns the written revision.
func casUpdate(ctx context.Context, kv *kvBucket, key string, fn func(old []byte, rev uint64) ([]byte, error)) (uint64, error) {
	for attempt := range maxCASAttempts {
		if attempt > 0 {
			// Conflicts come from other writers of the key: back off a
			// little, with jitter, so that contenders part.
			t := time.NewTimer(time.Duration(1+rand.IntN(1+min(attempt, 10))) * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return 0, fmt.Errorf("write %s: %w", key, ctx.Err())
			}
		}
		var old []byte
		var rev uint64
		// From the leader: a replica that lags would only lose the race.
		rec, found, err := jskv.GetFromLeader(ctx, kv.nc, kv.Bucket(), key)
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", key, err)
		}
		if found && !rec.Deleted {
			old, rev = rec.Value, rec.Revision
		}
		val, err := fn(old, rev)
		if errors.Is(err, errNoChange) {
			return rev, nil
		}
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev, err = kv.Create(ctx, key, val)
		} else {
			rev, err = kv.Update(ctx, key, val, rev)
		}
		if jskv.IsConflict(err) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("write %s: %w", key, err)
		}
		return rev, nil
	}
	return 0, fmt.Errorf("write %s: still conflicting after %d attempts", key, maxCASAttempts)
}

// openBucket creates or opens one of the hub's key-value buckets.
func openBucket(ctx context.Context, c *hub.Cluster, feature, desc string) (*kvBucket, error) {
	kv, err := c.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      c.Bucket(feature),
		Description: desc,
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(c.Replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %s: %w", c.Bucket(feature), err)
	}
	return &kvBucket{KeyValue: kv, nc: c.JS.Conn()}, nil
}
