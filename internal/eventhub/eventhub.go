// Package eventhub serves the built-in Event-Hub-compatible endpoint:
// $management, partition readers with filters, epochs and consumer groups.
//
// Clients reach it on the hub's own listeners after following the
// /messages/events redirect (or directly, with an Event Hubs connection
// string). The hub has already authenticated them (CBS put-token with sb://
// or amqps:// audiences) and authorized each link (a policy with
// ServiceConnect); this package serves three address kinds:
//
//   - {entity}/$management (and the bare $management the SDKs use):
//     request/response READ of com.microsoft:eventhub and
//     com.microsoft:partition, replies pre-settled on the receiver link whose
//     target address (or name) is the request's reply-to.
//   - {entity}/ConsumerGroups/{cg}/Partitions/{p}: a reader of one partition
//     of the telemetry log. The source's apache.org:selector-filter:string
//     picks the start (x-opt-offset, x-opt-sequence-number,
//     x-opt-enqueued-time with > or >=, '-1' = start, '@latest' = end); with
//     no filter the reader starts at the first retained event, as the legacy
//     Event Hubs clients' CreateReceiver without a position did. Events go
//     pre-settled, only within credit, each with x-opt-sequence-number,
//     x-opt-offset and x-opt-enqueued-time added to its annotations.
//   - {entity} and {entity}/Partitions/{p} (producers): refused with
//     amqp:not-allowed, since IoT Hub's built-in endpoint is read-only
//     (devices send to /devices/{id}/messages/events).
//
// Refusals: an unknown consumer group or partition gets amqp:not-found; a
// selector that does not parse gets amqp:not-allowed (the Go and Node SDKs
// treat it as final, where amqp:invalid-field would make the Go SDK retry
// the same attach); a sequence number past the end of the partition gets
// com.microsoft:argument-out-of-range. Readers that ask for the
// com.microsoft:enable-receiver-runtime-metric capability get the
// partition's last sequence number, offset and enqueued time in every
// event's delivery annotations.
//
// Ownership per (consumer group, partition) follows Event Hubs: a reader
// whose com.microsoft:epoch is at least the active epoch takes the
// partition and every other reader there is detached with amqp:link:stolen;
// a lower epoch, or no epoch while an epoch reader is active, is refused
// with amqp:link:stolen; at most 5 readers without epoch may share a
// partition, the sixth gets amqp:resource-limit-exceeded.
//
// Consumer groups: $Default always exists; others are created through
// Config.ConsumerGroups or the REST routes below (at most
// Config.MaxConsumerGroups, $Default included) and persisted in
// {DataDir}/eventhub/consumergroups.json (in memory with Env.InMemory).
// Deleting a group detaches its readers with amqp:not-found.
//
// With Env.Cluster (several nodes on NATS JetStream), consumer groups
// live in the key-value bucket Bucket("eventhub") (groups_kv.go) and
// ownership is decided on shared leases in Bucket("ehowners")
// (owners_kv.go), so that the rules above hold across nodes and a
// group created, listed or deleted on one node is the same on every
// node. Without a cluster nothing of this runs.
//
//	PUT    /eventHubs/consumerGroups/{name}   create (201; 200 if it exists)   ServiceConnect or RegistryWrite
//	GET    /eventHubs/consumerGroups          list                             ServiceConnect or RegistryRead
//	GET    /eventHubs/consumerGroups/{name}   get                              ServiceConnect or RegistryRead
//	DELETE /eventHubs/consumerGroups/{name}   delete (204)                     ServiceConnect or RegistryWrite
//
// # Concurrency
//
// Attach and management requests run on the connection's reader goroutine.
// Each partition reader has its own goroutine that reads batches from the
// log, sends them with Link.Send (which waits for credit) and parks in
// Log.Wait at the tail. Lock order: endpoint.mu -> groupStore.mu; reader.mu,
// kvGroups.mu and mgmtConn.mu are leaves. In a cluster, attaches wait for
// a compare-and-set on the lease record (bounded by kvOpTimeout), never
// under endpoint.mu. None is held while calling into the engine
// (Link.Close, Send) or the log.
package eventhub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/store/partlog"
)

// Config configures the endpoint.
type Config struct {
	// ConsumerGroups are created at start if missing ($Default always
	// exists).
	ConsumerGroups []string `yaml:"consumerGroups"`
	// MaxConsumerGroups bounds the consumer groups, $Default included.
	// Default 20 (IoT Hub's limit).
	MaxConsumerGroups int `yaml:"maxConsumerGroups"`
	// LeaseHeartbeat is how often a cluster node renews the ownership
	// leases of its partition readers; a lease expires three heartbeats
	// after its last renewal, which bounds how long the readers of a node
	// that died keep their partitions. Default 2 s. Unused on a single
	// node.
	LeaseHeartbeat time.Duration `yaml:"leaseHeartbeat"`
}

// MaxReadersPerPartition is how many readers without epoch may read one
// partition in one consumer group (the Event Hubs limit).
const MaxReadersPerPartition = 5

// Link properties and conditions of the Event Hubs dialect.
const (
	propEpoch        = "com.microsoft:epoch"
	propReceiverName = "com.microsoft:receiver-name"

	condArgumentOutOfRange amqp.Condition = "com.microsoft:argument-out-of-range"
)

// Reader batching: one Read returns at most this much, which bounds each
// reader's memory.
const (
	maxBatchRecords = 256
	maxBatchBytes   = 1 << 20
)

// Setup builds the Event-Hub-compatible endpoint.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	ep, err := newEndpoint(env, cfg)
	if err != nil {
		return nil, err
	}
	return &hub.Module{
		Endpoints: map[hub.Kind]hub.Endpoint{
			hub.KindEHManagement: hub.EndpointFunc(ep.attachManagement),
			hub.KindEHPartition:  hub.EndpointFunc(ep.attachPartition),
			hub.KindEHSend:       hub.EndpointFunc(ep.attachSend),
		},
		Close: ep.close,
	}, nil
}

// endpoint is the set-up feature.
type endpoint struct {
	entity string
	log    partlog.Log
	nparts int
	groups groupBackend
	leases *leases // nil on a single node
	env    *hub.Env
	logger *slog.Logger
	now    func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	owners map[ownerKey]map[*reader]struct{}
}

// ownerKey scopes ownership: one partition in one consumer group.
type ownerKey struct {
	group string // lower-cased
	part  int
}

func newEndpoint(env *hub.Env, cfg Config) (*endpoint, error) {
	if env == nil || env.Log == nil {
		return nil, errors.New("eventhub: the telemetry log is required")
	}
	if env.EventHubName == "" {
		return nil, errors.New("eventhub: the Event Hub name is required")
	}
	maxGroups := cfg.MaxConsumerGroups
	if maxGroups == 0 {
		maxGroups = DefaultMaxConsumerGroups
	}
	if maxGroups < 1 {
		return nil, fmt.Errorf("eventhub: MaxConsumerGroups %d must be at least 1", cfg.MaxConsumerGroups)
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.Default()
	}
	now := time.Now
	var groups groupBackend
	var kvg *kvGroups
	var ls *leases
	if c := env.Cluster; c != nil {
		hb := cfg.LeaseHeartbeat
		if hb <= 0 {
			hb = DefaultLeaseHeartbeat
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		if kvg, err = openKVGroups(ctx, c, maxGroups, now(), logger); err != nil {
			return nil, fmt.Errorf("eventhub: %w", err)
		}
		if ls, err = openLeases(ctx, c, hb); err != nil {
			return nil, fmt.Errorf("eventhub: %w", err)
		}
		groups = kvg
	} else {
		path := ""
		if !env.InMemory {
			if env.DataDir == "" {
				return nil, errors.New("eventhub: a data directory is required unless in memory")
			}
			path = filepath.Join(env.DataDir, "eventhub", "consumergroups.json")
		}
		gs, err := openGroups(path, maxGroups, now())
		if err != nil {
			return nil, fmt.Errorf("eventhub: %w", err)
		}
		groups = gs
	}
	for _, name := range cfg.ConsumerGroups {
		if _, _, err := groups.create(name, now()); err != nil {
			return nil, fmt.Errorf("eventhub: configured consumer group: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ep := &endpoint{
		entity: env.EventHubName,
		log:    env.Log,
		nparts: env.Log.Partitions(),
		groups: groups,
		leases: ls,
		env:    env,
		logger: logger,
		now:    now,
		ctx:    ctx,
		cancel: cancel,
		owners: map[ownerKey]map[*reader]struct{}{},
	}
	if err := ep.startCluster(kvg); err != nil {
		cancel()
		ep.wg.Wait()
		return nil, fmt.Errorf("eventhub: %w", err)
	}
	if env.REST != nil {
		ep.registerREST(env.REST)
	}
	return ep, nil
}

// startCluster starts following the consumer groups and the leases of
// other nodes, and renewing this node's leases (nothing on a single node).
func (ep *endpoint) startCluster(kvg *kvGroups) error {
	if ep.leases == nil {
		return nil
	}
	follow, err := kvg.watch(ep.ctx, ep.dropGroup)
	if err != nil {
		return err
	}
	w, err := ep.leases.kv.WatchAll(ep.ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch reader leases: %w", err)
	}
	ep.wg.Add(3)
	go func() {
		defer ep.wg.Done()
		follow()
	}()
	go ep.watchLeases(w)
	go ep.renewLeases()
	return nil
}

// close stops every reader; the engine has stopped by then.
func (ep *endpoint) close() error {
	ep.mu.Lock()
	ep.closed = true
	ep.mu.Unlock()
	ep.cancel()
	ep.wg.Wait()
	return nil
}

// partition parses a partition id: the decimal text of 0..N-1, exactly.
func (ep *endpoint) partition(id string) (int, bool) {
	n, err := strconv.Atoi(id)
	if err != nil || n < 0 || n >= ep.nparts || strconv.Itoa(n) != id {
		return 0, false
	}
	return n, true
}

func (ep *endpoint) partitionIDs() []string {
	ids := make([]string, ep.nparts)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// attachSend refuses producers: the built-in endpoint is read-only.
func (ep *endpoint) attachSend(req *hub.AttachRequest) *amqp.Error {
	return amqp.NewError(amqp.ErrCondNotAllowed, fmt.Sprintf(
		"the built-in Event-Hub-compatible endpoint %q is read-only: devices send telemetry to /devices/{deviceId}/messages/events", ep.entity))
}

// attachPartition admits a partition reader.
func (ep *endpoint) attachPartition(req *hub.AttachRequest) *amqp.Error {
	l, rt := req.Link, req.Route
	if !l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotAllowed, fmt.Sprintf(
			"%s is read by receivers; the built-in endpoint accepts no events", l.Address()))
	}
	part, ok := ep.partition(rt.Partition)
	if !ok {
		return amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf(
			"partition %q does not exist: %s has partitions 0 to %d", rt.Partition, ep.entity, ep.nparts-1))
	}
	group, ok := ep.groups.get(rt.ConsumerGroup)
	if !ok {
		return amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf(
			"consumer group %q does not exist on %s; create it first", rt.ConsumerGroup, ep.entity))
	}
	peer := l.PeerAttach()
	var filter map[encoding.Symbol]any
	if peer.Source != nil {
		filter = peer.Source.Filter
	}
	expr, err := selectorOf(filter)
	if err != nil {
		return amqp.NewError(amqp.ErrCondNotAllowed, err.Error())
	}
	pos, err := parseSelector(expr)
	if err != nil {
		return amqp.NewError(amqp.ErrCondNotAllowed, err.Error())
	}
	epoch, hasEpoch, err := epochOf(peer.Properties)
	if err != nil {
		return amqp.NewError(amqp.ErrCondNotAllowed, err.Error())
	}
	next, err := pos.resolve(ep.log, part)
	if errors.Is(err, errOutOfRange) {
		return amqp.NewError(condArgumentOutOfRange, err.Error())
	}
	if err != nil {
		ep.logger.Error("eventhub: resolving a reader's start", "partition", part, "filter", expr, "err", err)
		return amqp.NewError(amqp.ErrCondInternalError, "the partition cannot be read now")
	}
	r := &reader{
		ep:       ep,
		link:     l,
		part:     part,
		key:      ownerKey{group: strings.ToLower(group.Name), part: part},
		group:    group.Name,
		epoch:    epoch,
		hasEpoch: hasEpoch,
		name:     receiverName(peer.Properties),
		next:     next,
		metrics:  slices.Contains(peer.DesiredCapabilities, capRuntimeMetric),
	}
	victims, refuse := ep.admit(r)
	if refuse != nil {
		return refuse
	}
	for _, v := range victims {
		if !r.hasEpoch {
			// Only in a cluster: the victim's lease had expired.
			v.link.Close(lapsedError(v))
			continue
		}
		v.link.Close(amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
			"receiver %s with epoch %s took over partition %d of consumer group %s; this receiver (epoch %s) is disconnected",
			describeName(r.name), describeEpoch(r), part, group.Name, describeEpoch(v))))
	}
	// Events go pre-settled: Go clients replenish credit only for settled
	// deliveries and never settle Event Hubs events themselves.
	l.SetSenderSettleMode(frames.SenderSettleSettled)
	if r.metrics {
		l.SetOfferedCapabilities([]encoding.Symbol{capRuntimeMetric})
	}
	l.OnDrain(r.onDrain)
	go r.run()
	return nil
}

// admit applies the ownership rules and registers r. It returns the
// readers r displaces, or the refusal. Registration also adds r to ep.wg,
// so close waits for its goroutine.
func (ep *endpoint) admit(r *reader) ([]*reader, *amqp.Error) {
	if ep.leases != nil {
		return ep.admitClustered(r)
	}
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.closed {
		return nil, amqp.NewError(amqp.ErrCondDetachForced, "the hub is shutting down")
	}
	if _, ok := ep.groups.get(r.group); !ok {
		// Deleted while this attach was on its way (see dropGroup).
		return nil, amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("consumer group %q was deleted", r.group))
	}
	set := ep.owners[r.key]
	var victims []*reader
	if r.hasEpoch {
		for x := range set {
			if x.hasEpoch && x.epoch > r.epoch {
				return nil, amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
					"receiver %s with epoch %d is refused: receiver %s with the higher epoch %d owns partition %d of consumer group %s",
					describeName(r.name), r.epoch, describeName(x.name), x.epoch, r.part, r.group))
			}
		}
		for x := range set {
			victims = append(victims, x)
		}
		set = map[*reader]struct{}{}
	} else {
		var names []string
		for x := range set {
			if x.hasEpoch {
				return nil, amqp.NewError(amqp.ErrCondStolen, fmt.Sprintf(
					"a receiver without epoch is refused: receiver %s with epoch %d owns partition %d of consumer group %s",
					describeName(x.name), x.epoch, r.part, r.group))
			}
			names = append(names, describeName(x.name))
		}
		if len(names) >= MaxReadersPerPartition {
			slices.Sort(names)
			return nil, amqp.NewError(amqp.ErrCondResourceLimitExceeded, fmt.Sprintf(
				"at most %d receivers may read partition %d of consumer group %s at once; connected receivers: %s",
				MaxReadersPerPartition, r.part, r.group, strings.Join(names, ", ")))
		}
		if set == nil {
			set = map[*reader]struct{}{}
		}
	}
	set[r] = struct{}{}
	ep.owners[r.key] = set
	ep.wg.Add(1)
	return victims, nil
}

// release forgets r, and removes its lease in a cluster.
func (ep *endpoint) release(r *reader) {
	ep.mu.Lock()
	set := ep.owners[r.key]
	delete(set, r)
	if len(set) == 0 {
		delete(ep.owners, r.key)
	}
	ep.mu.Unlock()
	if ep.leases != nil {
		ep.releaseLease(r)
	}
}

// dropGroup detaches every reader of a deleted consumer group.
func (ep *endpoint) dropGroup(name string) {
	lower := strings.ToLower(name)
	var victims []*reader
	ep.mu.Lock()
	for k, set := range ep.owners {
		if k.group != lower {
			continue
		}
		for r := range set {
			victims = append(victims, r)
		}
		delete(ep.owners, k)
	}
	ep.mu.Unlock()
	for _, r := range victims {
		r.link.Close(amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("consumer group %q was deleted", name)))
	}
}

// epochOf reads com.microsoft:epoch from the attach properties.
func epochOf(props map[any]any) (int64, bool, error) {
	for k, v := range props {
		if keyName(k) != propEpoch {
			continue
		}
		switch v := v.(type) {
		case int64:
			return v, true, nil
		case int32:
			return int64(v), true, nil
		case int16:
			return int64(v), true, nil
		case int8:
			return int64(v), true, nil
		case uint32:
			return int64(v), true, nil
		case uint16:
			return int64(v), true, nil
		case uint8:
			return int64(v), true, nil
		case uint64:
			if v <= uint64(maxInt64) {
				return int64(v), true, nil
			}
		case nil:
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("the %s link property must be a long, not %T", propEpoch, v)
	}
	return 0, false, nil
}

// receiverName reads com.microsoft:receiver-name ("" if absent).
func receiverName(props map[any]any) string {
	for k, v := range props {
		if keyName(k) == propReceiverName {
			s, _ := v.(string)
			return s
		}
	}
	return ""
}

func keyName(k any) string {
	switch k := k.(type) {
	case encoding.Symbol:
		return string(k)
	case string:
		return k
	}
	return ""
}

func describeName(name string) string {
	if name == "" {
		return "nil"
	}
	return "'" + name + "'"
}

func describeEpoch(r *reader) string { return describeEpochOf(r.hasEpoch, r.epoch) }

func describeEpochOf(hasEpoch bool, epoch int64) string {
	if !hasEpoch {
		return "none"
	}
	return strconv.FormatInt(epoch, 10)
}
