package eventhub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/hub"
)

// groupBackend keeps the consumer groups: a JSON file (or memory) on a
// single node, a key-value bucket shared by the nodes of a cluster.
type groupBackend interface {
	createdAt() time.Time
	get(name string) (ConsumerGroup, bool)
	list() []ConsumerGroup
	create(name string, now time.Time) (ConsumerGroup, bool, error)
	remove(name string) error
}

var (
	_ groupBackend = (*groupStore)(nil)
	_ groupBackend = (*kvGroups)(nil)
)

// Keys of the consumer group bucket. The index is the membership: a group
// exists when its lower-cased name is listed there. Every change of
// membership is a compare-and-set of the index, which makes the limit on
// the number of groups hold under concurrent creates on several nodes.
// Each group's details (name as created, creation time) live under their
// own key, written before the group enters the index and deleted after it
// left it.
const (
	kvEntityKey      = "entity"
	kvIndexKey       = "index"
	kvGroupKeyPrefix = "group."
)

type kvEntity struct {
	CreatedAt time.Time `json:"createdAt"`
}

type kvIndex struct {
	Groups []string `json:"groups"` // lower-cased names, sorted, $Default excluded
}

func groupKey(lower string) string { return kvGroupKeyPrefix + hub.SubjectToken(lower) }

// kvGroups keeps the consumer groups in a JetStream key-value bucket. A
// watch on the index keeps a local copy, so attaches find their group
// without a round trip; a group missing from the copy is looked up in the
// bucket (it may have been created on another node an instant ago).
type kvGroups struct {
	kv      *kvBucket
	max     int
	created time.Time
	logger  *slog.Logger

	mu       sync.Mutex
	cache    map[string]ConsumerGroup // lower-cased name -> group
	onDelete func(name string)        // called (not under mu) for groups deleted anywhere
}

// openKVGroups opens the bucket, records the entity's creation time if it
// is the first node to start, and loads the groups.
func openKVGroups(ctx context.Context, c *hub.Cluster, max int, now time.Time, logger *slog.Logger) (*kvGroups, error) {
	kv, err := openBucket(ctx, c, "eventhub", "amqphub Event-Hub-compatible endpoint: consumer groups")
	if err != nil {
		return nil, err
	}
	s := &kvGroups{kv: kv, max: max, logger: logger, cache: map[string]ConsumerGroup{}}
	ent := kvEntity{CreatedAt: now.UTC().Truncate(time.Millisecond)}
	b, err := json.Marshal(ent)
	if err != nil {
		return nil, err
	}
	if _, err := kv.Create(ctx, kvEntityKey, b); errors.Is(err, jetstream.ErrKeyExists) {
		e, err := kv.Get(ctx, kvEntityKey)
		if err != nil {
			return nil, fmt.Errorf("read the entity's creation time: %w", err)
		}
		if err := json.Unmarshal(e.Value(), &ent); err != nil {
			return nil, fmt.Errorf("the entity record is corrupt: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("record the entity's creation time: %w", err)
	}
	s.created = ent.CreatedAt
	return s, nil
}

// watch follows the index until ctx ends: it fills the local copy (before
// returning, with the current index) and reports deleted groups to
// onDelete, which the endpoint uses to detach their readers on every node.
func (s *kvGroups) watch(ctx context.Context, onDelete func(name string)) (func(), error) {
	s.onDelete = onDelete
	w, err := s.kv.Watch(ctx, kvIndexKey)
	if err != nil {
		return nil, fmt.Errorf("watch the consumer group index: %w", err)
	}
	// The watch first delivers the current value, then nil.
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				return func() { s.follow(ctx, w) }, nil
			}
			s.apply(ctx, e)
		case <-ctx.Done():
			w.Stop()
			return nil, ctx.Err()
		}
	}
}

func (s *kvGroups) follow(ctx context.Context, w jetstream.KeyWatcher) {
	defer w.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				s.apply(ctx, e)
			}
		case <-ctx.Done():
			return
		}
	}
}

// apply brings the local copy to an index revision.
func (s *kvGroups) apply(ctx context.Context, e jetstream.KeyValueEntry) {
	var idx kvIndex
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &idx); err != nil {
			s.logger.Error("eventhub: corrupt consumer group index", "err", err)
			return
		}
	}
	want := map[string]bool{}
	for _, n := range idx.Groups {
		want[n] = true
	}
	s.mu.Lock()
	var gone []ConsumerGroup
	for lower, g := range s.cache {
		if !want[lower] {
			gone = append(gone, g)
			delete(s.cache, lower)
		}
	}
	var added []string
	for n := range want {
		if _, ok := s.cache[n]; !ok {
			added = append(added, n)
		}
	}
	s.mu.Unlock()
	for _, lower := range added {
		g, err := s.readGroup(ctx, lower)
		if err != nil {
			// Deleted again meanwhile, or unreadable: get falls back
			// to the bucket for groups missing here.
			s.logger.Info("eventhub: reading a new consumer group", "group", lower, "err", err)
			continue
		}
		s.mu.Lock()
		s.cache[lower] = g
		s.mu.Unlock()
	}
	for _, g := range gone {
		if s.onDelete != nil {
			s.onDelete(g.Name)
		}
	}
}

func (s *kvGroups) readIndex(ctx context.Context) ([]string, error) {
	e, err := s.kv.Get(ctx, kvIndexKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the consumer group index: %w", err)
	}
	var idx kvIndex
	if err := json.Unmarshal(e.Value(), &idx); err != nil {
		return nil, fmt.Errorf("the consumer group index is corrupt: %w", err)
	}
	return idx.Groups, nil
}

func (s *kvGroups) readGroup(ctx context.Context, lower string) (ConsumerGroup, error) {
	e, err := s.kv.Get(ctx, groupKey(lower))
	if err != nil {
		return ConsumerGroup{}, fmt.Errorf("read consumer group %q: %w", lower, err)
	}
	var g ConsumerGroup
	if err := json.Unmarshal(e.Value(), &g); err != nil {
		return ConsumerGroup{}, fmt.Errorf("consumer group %q is corrupt: %w", lower, err)
	}
	return g, nil
}

func (s *kvGroups) createdAt() time.Time { return s.created }

// get returns a group from the local copy, else from the bucket.
func (s *kvGroups) get(name string) (ConsumerGroup, bool) {
	if isDefaultGroup(name) {
		return ConsumerGroup{Name: DefaultConsumerGroup, CreatedAt: s.created}, true
	}
	lower := strings.ToLower(name)
	s.mu.Lock()
	g, ok := s.cache[lower]
	s.mu.Unlock()
	if ok {
		return g, true
	}
	if validGroupName(name) != nil {
		return ConsumerGroup{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), kvOpTimeout)
	defer cancel()
	idx, err := s.readIndex(ctx)
	if err != nil {
		s.logger.Error("eventhub: looking up a consumer group", "group", name, "err", err)
		return ConsumerGroup{}, false
	}
	if !slices.Contains(idx, lower) {
		return ConsumerGroup{}, false
	}
	g, err = s.readGroup(ctx, lower)
	if err != nil {
		s.logger.Info("eventhub: looking up a consumer group", "group", name, "err", err)
		return ConsumerGroup{}, false
	}
	return g, true
}

// list reads the groups from the bucket, so that it agrees with creates
// and deletes just made on other nodes; if the bucket cannot be read it
// answers from the local copy.
func (s *kvGroups) list() []ConsumerGroup {
	ctx, cancel := context.WithTimeout(context.Background(), kvOpTimeout)
	defer cancel()
	var out []ConsumerGroup
	idx, err := s.readIndex(ctx)
	if err == nil {
		for _, lower := range idx {
			g, err := s.readGroup(ctx, lower)
			if err != nil {
				s.logger.Info("eventhub: listing consumer groups", "err", err)
				continue
			}
			out = append(out, g)
		}
	} else {
		s.logger.Error("eventhub: listing consumer groups from the bucket; answering from the local copy", "err", err)
		s.mu.Lock()
		for _, g := range s.cache {
			out = append(out, g)
		}
		s.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b ConsumerGroup) int { return strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)) })
	return append([]ConsumerGroup{{Name: DefaultConsumerGroup, CreatedAt: s.created}}, out...)
}

// create adds a group unless it exists (any case) or the limit is
// reached. The details are written first and the index is then updated
// by compare-and-set after checking the count, so that concurrent creates
// on several nodes never exceed the limit; a create that loses leaves its
// details unlisted, which is harmless (the index is the membership) and
// overwritten by the next create of that name.
func (s *kvGroups) create(name string, now time.Time) (ConsumerGroup, bool, error) {
	if isDefaultGroup(name) {
		g, _ := s.get(name)
		return g, false, nil
	}
	if err := validGroupName(name); err != nil {
		return ConsumerGroup{}, false, err
	}
	lower := strings.ToLower(name)
	ctx, cancel := context.WithTimeout(context.Background(), kvOpTimeout)
	defer cancel()
	for range maxCASAttempts {
		idx, err := s.readIndex(ctx)
		if err != nil {
			return ConsumerGroup{}, false, err
		}
		if slices.Contains(idx, lower) {
			g, err := s.readGroup(ctx, lower)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue // deleted meanwhile: look again
			}
			return g, false, err
		}
		if len(idx)+1 >= s.max {
			return ConsumerGroup{}, false, fmt.Errorf("%w: the limit is %d including %s", ErrTooManyGroups, s.max, DefaultConsumerGroup)
		}
		g := ConsumerGroup{Name: name, CreatedAt: now.UTC().Truncate(time.Millisecond)}
		b, err := json.Marshal(g)
		if err != nil {
			return ConsumerGroup{}, false, err
		}
		if _, err := s.kv.Put(ctx, groupKey(lower), b); err != nil {
			return ConsumerGroup{}, false, fmt.Errorf("write consumer group %q: %w", name, err)
		}
		raced := false
		_, err = casUpdate(ctx, s.kv, kvIndexKey, func(old []byte, _ uint64) ([]byte, error) {
			var cur kvIndex
			if old != nil {
				if err := json.Unmarshal(old, &cur); err != nil {
					return nil, fmt.Errorf("the consumer group index is corrupt: %w", err)
				}
			}
			if slices.Contains(cur.Groups, lower) || len(cur.Groups)+1 >= s.max {
				raced = true // decided again from the top
				return nil, errNoChange
			}
			cur.Groups = append(cur.Groups, lower)
			slices.Sort(cur.Groups)
			return json.Marshal(cur)
		})
		if err != nil {
			return ConsumerGroup{}, false, err
		}
		if raced {
			continue
		}
		return g, true, nil
	}
	return ConsumerGroup{}, false, fmt.Errorf("create consumer group %q: still conflicting after %d attempts", name, maxCASAttempts)
}

// remove deletes a group: out of the index (the membership), then its
// details.
func (s *kvGroups) remove(name string) error {
	if isDefaultGroup(name) {
		return ErrDefaultGroupFixed
	}
	lower := strings.ToLower(name)
	ctx, cancel := context.WithTimeout(context.Background(), kvOpTimeout)
	defer cancel()
	found := false
	_, err := casUpdate(ctx, s.kv, kvIndexKey, func(old []byte, _ uint64) ([]byte, error) {
		var cur kvIndex
		if old != nil {
			if err := json.Unmarshal(old, &cur); err != nil {
				return nil, fmt.Errorf("the consumer group index is corrupt: %w", err)
			}
		}
		i := slices.Index(cur.Groups, lower)
		if found = i >= 0; !found {
			return nil, errNoChange
		}
		cur.Groups = slices.Delete(cur.Groups, i, i+1)
		return json.Marshal(cur)
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: %q", ErrGroupNotFound, name)
	}
	if err := s.kv.Delete(ctx, groupKey(lower)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		// Unlisted already; the details are overwritten by a re-create.
		s.logger.Info("eventhub: deleting a consumer group's details", "group", name, "err", err)
	}
	return nil
}
