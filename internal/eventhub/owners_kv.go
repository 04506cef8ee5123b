package eventhub

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/amqp"
	"amqphub/internal/hub"
)

// Reader ownership across nodes.
//
// With a cluster, readers of one (consumer group, partition) may sit on
// different nodes, so the ownership rules are applied to a shared lease
// record: one key per (group, partition) in the bucket Bucket("ehowners")
// listing the readers, each with its node, a reader id unique to the
// node, its epoch and name, and an expiry. An attach reads the record,
// drops expired entries, applies the same rules as a single node (epochs,
// at most MaxReadersPerPartition readers without epoch) and writes the
// record back by compare-and-set, retrying on conflict; the record is the
// only judge, and every node's readers are in it. A node renews its
// entries every LeaseHeartbeat (expiry: three heartbeats) and removes a
// reader's entry when it detaches. Every node watches the bucket: when a
// write by another node (a higher epoch) removed entries of readers it
// holds, it detaches them with amqp:link:stolen, as a single node does.
//
// A node that dies leaves its entries behind until they expire: for up to
// three heartbeats (6 s by default) after the last renewal, its epoch
// readers keep refusing lower epochs and its readers without epoch count
// toward the limit of five. Expiry compares the nodes' wall clocks, so
// clock skew between nodes lengthens or shortens that window by the skew.

// DefaultLeaseHeartbeat is how often a cluster node renews its readers'
// ownership leases.
const DefaultLeaseHeartbeat = 2 * time.Second

// leaseExpiryBeats is how many heartbeats a lease outlives its renewal.
const leaseExpiryBeats = 3

// leaseEntry is one reader in a lease record.
type leaseEntry struct {
	Node     string `json:"n"`
	ID       string `json:"r"`
	Epoch    int64  `json:"e,omitempty"`
	HasEpoch bool   `json:"he,omitempty"`
	Name     string `json:"nm,omitempty"`
	Expires  int64  `json:"x"` // Unix milliseconds
}

// leaseRecord is the value under a (group, partition) key.
type leaseRecord struct {
	Readers []leaseEntry `json:"readers"`
}

func decodeLeases(b []byte) (leaseRecord, error) {
	var rec leaseRecord
	if len(b) == 0 {
		return rec, nil
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("corrupt lease record: %w", err)
	}
	return rec, nil
}

// leases is an endpoint's cluster ownership state.
type leases struct {
	kv        *kvBucket
	node      string
	heartbeat time.Duration
	ttl       time.Duration
	seq       atomic.Uint64
}

func openLeases(ctx context.Context, c *hub.Cluster, heartbeat time.Duration) (*leases, error) {
	kv, err := openBucket(ctx, c, "ehowners", "amqphub Event-Hub-compatible endpoint: partition reader leases")
	if err != nil {
		return nil, err
	}
	return &leases{kv: kv, node: c.NodeID, heartbeat: heartbeat, ttl: leaseExpiryBeats * heartbeat}, nil
}

// leaseKey names the record of (group, partition): the group's token and
// the partition number, both valid key tokens.
func leaseKey(k ownerKey) string { return hub.SubjectToken(k.group) + "." + strconv.Itoa(k.part) }

func parseLeaseKey(s string) (ownerKey, bool) {
	tok, part, ok := strings.Cut(s, ".")
	if !ok {
		return ownerKey{}, false
	}
	g, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return ownerKey{}, false
	}
	p, err := strconv.Atoi(part)
	if err != nil {
		return ownerKey{}, false
	}
	return ownerKey{group: string(g), part: p}, true
}

func (ls *leases) entry(r *reader, now time.Time) leaseEntry {
	return leaseEntry{Node: ls.node, ID: r.id, Epoch: r.epoch, HasEpoch: r.hasEpoch, Name: r.name, Expires: now.Add(ls.ttl).UnixMilli()}
}

// admitClustered is admit for a cluster: the rules are applied to the
// shared lease record. Readers of this node that the write removed are
// returned as victims; other nodes' removed readers are detached by their
// own node's watch.
func (ep *endpoint) admitClustered(r *reader) ([]*reader, *amqp.Error) {
	ls := ep.leases
	ep.mu.Lock()
	closed := ep.closed
	ep.mu.Unlock()
	if closed {
		return nil, amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down")
	}
	if _, ok := ep.groups.get(r.group); !ok {
		return nil, amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("consumer group %q was deleted", r.group))
	}
	r.id = ls.node + "-" + strconv.FormatUint(ls.seq.Add(1), 10)
	var refuse *amqp.Error
	var removed []leaseEntry
	ctx, cancel := context.WithTimeout(ep.ctx, kvOpTimeout)
	defer cancel()
	rev, err := casUpdate(ctx, ls.kv, leaseKey(r.key), func(old []byte, _ uint64) ([]byte, error) {
		refuse, removed = nil, nil
		rec, err := decodeLeases(old)
		if err != nil {
			// Rebuilt from the readers that attach from now on.
			ep.logger.Error("eventhub: dropping a corrupt lease record", "key", leaseKey(r.key), "err", err)
		}
		now := ep.now()
		var live []leaseEntry
		for _, x := range rec.Readers {
			if x.Expires > now.UnixMilli() {
				live = append(live, x)
			} else {
				removed = append(removed, x)
			}
		}
		var keep []leaseEntry
		refuse, keep = ownershipRules(r, live)
		if refuse != nil {
			return nil, errNoChange
		}
		for _, x := range live {
			if !slices.Contains(keep, x) {
				removed = append(removed, x)
			}
		}
		return json.Marshal(leaseRecord{Readers: append(keep, ls.entry(r, now))})
	})
	if err != nil {
		ep.logger.Error("eventhub: recording a reader's ownership", "partition", r.part, "group", r.group, "err", err)
		return nil, amqp.NewError(amqp.ErrCondInternalError, "the partition's ownership cannot be recorded now; try again")
	}
	if refuse != nil {
		return nil, refuse
	}
	ep.mu.Lock()
	if ep.closed {
		ep.mu.Unlock()
		ep.releaseLease(r)
		return nil, amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down")
	}
	r.rev = rev
	set := ep.owners[r.key]
	if set == nil {
		set = map[*reader]struct{}{}
		ep.owners[r.key] = set
	}
	var victims []*reader
	for x := range set {
		if slices.ContainsFunc(removed, func(e leaseEntry) bool { return e.ID == x.id }) {
			victims = append(victims, x)
			delete(set, x)
		}
	}
	set[r] = struct{}{}
	ep.wg.Add(1)
	ep.mu.Unlock()
	return victims, nil
}

// holder is a reader as the ownership rules see it: local or in a lease.
type holder struct {
	name     string
	epoch    int64
	hasEpoch bool
}

// ownershipRules decides whether r may join the holders: the refusal, or
// the holders that stay (all of them, or none when r's epoch takes over).
func ownershipRules[T any](r *reader, set []T) (*amqp.Error, []T) {
	hs := make([]holder, len(set))
	for i, x := range set {
		hs[i] = holderOf(x)
	}
	if r.hasEpoch {
		for _, x := range hs {
			if x.hasEpoch && x.epoch > r.epoch {
				return amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
					"receiver %s with epoch %d is refused: receiver %s with the higher epoch %d owns partition %d of consumer group %s",
					describeName(r.name), r.epoch, describeName(x.name), x.epoch, r.part, r.group)), nil
			}
		}
		return nil, nil
	}
	var names []string
	for _, x := range hs {
		if x.hasEpoch {
			return amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
				"a receiver without epoch is refused: receiver %s with epoch %d owns partition %d of consumer group %s",
				describeName(x.name), x.epoch, r.part, r.group)), nil
		}
		names = append(names, describeName(x.name))
	}
	if len(names) >= MaxReadersPerPartition {
		slices.Sort(names)
		return amqp.NewError(amqp.ErrCondResourceLimitExceeded, fmt.Sprintf(
			"at most %d receivers may read partition %d of consumer group %s at once; connected receivers: %s",
			MaxReadersPerPartition, r.part, r.group, strings.Join(names, ", "))), nil
	}
	return nil, set
}

func holderOf(x any) holder {
	switch x := x.(type) {
	case *reader:
		return holder{name: x.name, epoch: x.epoch, hasEpoch: x.hasEpoch}
	case leaseEntry:
		return holder{name: x.Name, epoch: x.Epoch, hasEpoch: x.HasEpoch}
	}
	return holder{}
}

// stolenError is the detach of a reader whose partition another reader
// took over.
func stolenError(thief holder, part int, group string, victim *reader) *amqp.Error {
	return amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
		"receiver %s with epoch %s took over partition %d of consumer group %s; this receiver (epoch %s) is disconnected",
		describeName(thief.name), describeEpochOf(thief.hasEpoch, thief.epoch), part, group, describeEpochOf(victim.hasEpoch, victim.epoch)))
}

// releaseLease removes r's entry from its lease record.
func (ep *endpoint) releaseLease(r *reader) {
	ls := ep.leases
	timeout := kvOpTimeout
	if ep.ctx.Err() != nil {
		// Shutting down: do not hold the node's exit for long on a
		// NATS that does not answer; the entry expires anyway.
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, err := casUpdate(ctx, ls.kv, leaseKey(r.key), func(old []byte, _ uint64) ([]byte, error) {
		rec, err := decodeLeases(old)
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(rec.Readers, func(e leaseEntry) bool { return e.ID == r.id })
		if i < 0 {
			return nil, errNoChange
		}
		rec.Readers = slices.Delete(rec.Readers, i, i+1)
		return json.Marshal(rec)
	})
	if err != nil {
		ep.logger.Info("eventhub: removing a reader's lease; it expires by itself", "partition", r.part, "group", r.group, "err", err)
	}
}

// renewLeases runs until the endpoint closes: every heartbeat it pushes
// the expiry of this node's entries forward.
func (ep *endpoint) renewLeases() {
	defer ep.wg.Done()
	t := time.NewTicker(ep.leases.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ep.ctx.Done():
			return
		case <-t.C:
		}
		ids := map[ownerKey][]string{}
		ep.mu.Lock()
		for k, set := range ep.owners {
			for r := range set {
				ids[k] = append(ids[k], r.id)
			}
		}
		ep.mu.Unlock()
		for k, mine := range ids {
			ep.renew(k, mine)
		}
	}
}

func (ep *endpoint) renew(k ownerKey, mine []string) {
	ls := ep.leases
	ctx, cancel := context.WithTimeout(ep.ctx, ls.heartbeat)
	defer cancel()
	var seen leaseRecord
	var seenRev uint64
	_, err := casUpdate(ctx, ls.kv, leaseKey(k), func(old []byte, rev uint64) ([]byte, error) {
		rec, err := decodeLeases(old)
		if err != nil {
			return nil, err
		}
		seen, seenRev = rec, rev
		exp := ep.now().Add(ls.ttl).UnixMilli()
		n := 0
		for i := range rec.Readers {
			// Entries the record no longer has were taken over: the watch
			// detaches their readers. They are not written back.
			if e := &rec.Readers[i]; e.Node == ls.node && slices.Contains(mine, e.ID) {
				e.Expires = exp
				n++
			}
		}
		if n == 0 {
			return nil, errNoChange
		}
		return json.Marshal(rec)
	})
	if err != nil && ep.ctx.Err() == nil {
		ep.logger.Warn("eventhub: renewing reader leases", "partition", k.part, "group", k.group, "err", err)
	}
	// The watch detaches the readers that other nodes' writes removed;
	// this catches those whose removal it saw before they were
	// registered here, or missed.
	if seenRev > 0 {
		ep.evictMissing(k, seenRev, seen)
	}
}

// watchLeases runs until the endpoint closes: it detaches this node's
// readers whose entries another node's write removed.
func (ep *endpoint) watchLeases(w jetstream.KeyWatcher) {
	defer ep.wg.Done()
	defer w.Stop()
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ep.ctx.Done():
			return
		case e, ok = <-w.Updates():
		}
		if !ok {
			return
		}
		if e == nil {
			continue
		}
		k, valid := parseLeaseKey(e.Key())
		if !valid {
			continue
		}
		var rec leaseRecord
		if e.Operation() == jetstream.KeyValuePut {
			var err error
			if rec, err = decodeLeases(e.Value()); err != nil {
				continue // whoever writes next rebuilds it
			}
		}
		ep.evictMissing(k, e.Revision(), rec)
	}
}

// evictMissing detaches local readers of k admitted before revision rev
// that the record at rev no longer lists.
func (ep *endpoint) evictMissing(k ownerKey, rev uint64, rec leaseRecord) {
	var victims []*reader
	ep.mu.Lock()
	for r := range ep.owners[k] {
		if r.rev < rev && !slices.ContainsFunc(rec.Readers, func(e leaseEntry) bool { return e.ID == r.id }) {
			victims = append(victims, r)
			delete(ep.owners[k], r)
		}
	}
	ep.mu.Unlock()
	if len(victims) == 0 {
		return
	}
	// The new owner is the epoch reader, if any.
	var thief *leaseEntry
	for i := range rec.Readers {
		if x := &rec.Readers[i]; x.HasEpoch && (thief == nil || x.Epoch > thief.Epoch) {
			thief = x
		}
	}
	for _, v := range victims {
		if thief != nil {
			v.link.Close(stolenError(holderOf(*thief), v.part, v.group, v))
			continue
		}
		v.link.Close(lapsedError(v))
	}
}

// lapsedError is the detach of a reader whose lease expired (its node did
// not renew it in time) and was dropped by another attach.
func lapsedError(v *reader) *amqp.Error {
	return amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
		"the ownership of this receiver (epoch %s) on partition %d of consumer group %s lapsed and was taken over; attach again",
		describeEpochOf(v.hasEpoch, v.epoch), v.part, v.group))
}
