package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
)

// StartPosition is where an EventReader starts in each partition.
type StartPosition struct {
	kind int
	seq  int64
	t    time.Time
}

const (
	startEarliest = iota
	startLatest
	startSequence
	startTime
)

// StartEarliest starts at the oldest retained event.
func StartEarliest() StartPosition { return StartPosition{kind: startEarliest} }

// StartLatest starts with the events enqueued after the reader attaches.
func StartLatest() StartPosition { return StartPosition{kind: startLatest} }

// StartAtSequenceNumber starts at the event with sequence number n
// (inclusive) in every partition.
func StartAtSequenceNumber(n int64) StartPosition { return StartPosition{kind: startSequence, seq: n} }

// StartAtEnqueuedTime starts at the first event enqueued at or after t.
func StartAtEnqueuedTime(t time.Time) StartPosition { return StartPosition{kind: startTime, t: t} }

// ParseStartPosition parses "earliest", "latest", a sequence number, or an
// RFC 3339 time (how the CLI's --from reads).
func ParseStartPosition(s string) (StartPosition, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "earliest", "start", "beginning":
		return StartEarliest(), nil
	case "latest", "end", "now":
		return StartLatest(), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
		return StartAtSequenceNumber(n), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return StartAtEnqueuedTime(t), nil
	}
	return StartPosition{}, fmt.Errorf("start position %q: want earliest, latest, a sequence number or an RFC 3339 time (e.g. 2025-01-02T15:04:05Z)", s)
}

// String describes the position.
func (p StartPosition) String() string {
	switch p.kind {
	case startLatest:
		return "latest"
	case startSequence:
		return "sequence number " + strconv.FormatInt(p.seq, 10)
	case startTime:
		return p.t.UTC().Format(time.RFC3339Nano)
	}
	return "earliest"
}

// selector is the Event Hubs selector filter of the position.
func (p StartPosition) selector() string {
	switch p.kind {
	case startLatest:
		return "amqp.annotation.x-opt-offset > '@latest'"
	case startSequence:
		return fmt.Sprintf("amqp.annotation.x-opt-sequence-number >= '%d'", p.seq)
	case startTime:
		return fmt.Sprintf("amqp.annotation.x-opt-enqueued-time >= '%d'", p.t.UnixMilli())
	}
	return "amqp.annotation.x-opt-offset > '-1'"
}

// Event is a telemetry message read from the hub, with the system
// properties the hub stamped on it.
type Event struct {
	Message
	// Partition is the partition it was read from.
	Partition string
	// SequenceNumber, Offset and EnqueuedTime are its position.
	SequenceNumber int64
	Offset         string
	EnqueuedTime   time.Time
	// DeviceID and ModuleID identify the sender.
	DeviceID string
	ModuleID string
	// SystemProperties are all message annotations (iothub-*, x-opt-*).
	SystemProperties map[string]any
}

func newEvent(partition string, m *goamqp.Message) *Event {
	e := &Event{Partition: partition}
	e.Message.fromAMQP(m)
	e.SequenceNumber, _ = annotationInt(m, "x-opt-sequence-number")
	e.Offset = annotationString(m, "x-opt-offset")
	e.EnqueuedTime = annotationTime(m, "x-opt-enqueued-time")
	if e.EnqueuedTime.IsZero() {
		e.EnqueuedTime = annotationTime(m, "iothub-enqueuedtime")
	}
	e.DeviceID = annotationString(m, "iothub-connection-device-id")
	e.ModuleID = annotationString(m, "iothub-connection-module-id")
	e.SystemProperties = make(map[string]any, len(m.Annotations))
	for k, v := range m.Annotations {
		e.SystemProperties[fmt.Sprint(k)] = v
	}
	return e
}

// EventReaderOptions configure an EventReader.
type EventReaderOptions struct {
	// ConsumerGroup defaults to $Default.
	ConsumerGroup string
	// Partitions to read; default all.
	Partitions []string
	// Start is where each partition starts; default StartEarliest. A
	// sequence number that a partition has not reached yet starts that
	// partition at its end, skipping the events numbered below it.
	Start StartPosition
	// PartitionStart overrides Start for some partitions (e.g. to resume
	// each after the last event processed).
	PartitionStart map[string]StartPosition
	// Prefetch is how many events each partition may have in flight
	// (link credit); default 100.
	Prefetch int
}

// EventReader reads telemetry from every partition of the hub's
// Event-Hub-compatible endpoint, found by following the hub's redirect.
// Events of one partition arrive in order; partitions interleave. After a
// lost connection a partition resumes after the last event it returned.
type EventReader struct {
	s          *ServiceClient
	opts       EventReaderOptions
	partitions []string
	target     redirectTarget
	eh         *connector

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	events chan *Event
	failed chan struct{}

	mu     sync.Mutex
	err    error
	closed bool
	addrs  map[string]redirectTarget // partition → its redirect
}

// redirectTarget is where an amqp:link:redirect points.
type redirectTarget struct {
	hostName string // TLS and AMQP host name
	url      string // amqp[s]://network-host:port
	base     string // amqp[s]://hostname:port (token audiences)
	path     string // link address, e.g. "hub/ConsumerGroups/$Default/Partitions/0"
	entity   string
}

var managementAddress = regexp.MustCompile(`:\d+/(.*)/\$management$`)

// NewEventReader starts reading telemetry. It follows the redirect of the
// hub's /messages/events address to the Event-Hub-compatible endpoint,
// reads the partition list there (unless opts names partitions) and
// attaches a reader to each partition with the start filter. Close it when
// done.
func (s *ServiceClient) NewEventReader(ctx context.Context, opts *EventReaderOptions) (*EventReader, error) {
	o := EventReaderOptions{}
	if opts != nil {
		o = *opts
	}
	if o.ConsumerGroup == "" {
		o.ConsumerGroup = "$Default"
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 100
	}
	mgmt, err := s.redirect(ctx, "/messages/events/$management")
	if err != nil {
		return nil, err
	}
	if mgmt.entity == "" {
		return nil, fmt.Errorf("read /messages/events/$management: the redirect does not name the Event Hub")
	}
	r := &EventReader{
		s: s, opts: o, target: mgmt,
		eh: newConnector(dialConfig{
			hostName: mgmt.hostName, url: mgmt.url, tlsConfig: s.opts.TLSConfig, anonymous: true, log: s.log,
		}),
		events: make(chan *Event, o.Prefetch),
		failed: make(chan struct{}),
		addrs:  map[string]redirectTarget{},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.eh.close()
		return nil, ErrClosed
	}
	s.readers[r] = struct{}{}
	s.mu.Unlock()

	r.partitions = o.Partitions
	if len(r.partitions) == 0 {
		if r.partitions, err = r.readPartitionIDs(ctx); err != nil {
			r.Close()
			return nil, err
		}
	}
	ready := make(chan struct{}, len(r.partitions))
	r.mu.Lock()
	if r.closed {
		// The service client closed meanwhile.
		r.mu.Unlock()
		return nil, ErrClosed
	}
	for _, p := range r.partitions {
		r.wg.Add(1)
		go r.runPartition(p, ready)
	}
	r.mu.Unlock()
	// Return once every partition link is attached, so that StartLatest
	// means "after NewEventReader returns".
	for range r.partitions {
		select {
		case <-ready:
		case <-r.failed:
			err := r.Err()
			r.Close()
			return nil, err
		case <-ctx.Done():
			r.Close()
			return nil, ctx.Err()
		}
	}
	return r, nil
}

// Err returns the error that stopped the reader, or nil.
func (r *EventReader) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Partitions returns the partitions being read.
func (r *EventReader) Partitions() []string { return append([]string(nil), r.partitions...) }

// EventHubName returns the Event-Hub-compatible name of the hub's
// telemetry, as the redirect named it.
func (r *EventReader) EventHubName() string { return r.target.entity }

// Receive returns the next event from any partition. After a partition
// fails for good (e.g. an unknown consumer group), Receive returns that
// error.
func (r *EventReader) Receive(ctx context.Context) (*Event, error) {
	select {
	case e := <-r.events:
		return e, nil
	default:
	}
	select {
	case e := <-r.events:
		return e, nil
	case <-r.failed:
		r.mu.Lock()
		defer r.mu.Unlock()
		return nil, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops the partition readers and closes their connection.
func (r *EventReader) Close() error {
	r.mu.Lock()
	r.closed = true // no partition starts after this
	r.mu.Unlock()
	r.cancel()
	r.eh.close()
	r.wg.Wait()
	r.setErr(ErrClosed)
	r.s.mu.Lock()
	delete(r.s.readers, r)
	r.s.mu.Unlock()
	return nil
}

func (r *EventReader) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		close(r.failed)
	}
}

// redirect attaches a receiver to source on the hub and returns where the
// hub's amqp:link:redirect points.
func (s *ServiceClient) redirect(ctx context.Context, source string) (redirectTarget, error) {
	var out redirectTarget
	err := s.do(ctx, "read "+source, func(ctx context.Context, lc *liveConn) error {
		// No credit: the hub detaches at once, and a flow go-amqp sent
		// after answering that detach would end the session.
		rcv, err := lc.sess.NewReceiver(ctx, source, &goamqp.ReceiverOptions{Credit: -1})
		if err == nil {
			// The hub may complete the attach and detach right after.
			_, err = rcv.Receive(ctx, nil)
			closeQuietly(rcv)
			if err == nil {
				return fmt.Errorf("read %s: the hub sent a message instead of redirecting to its Event-Hub-compatible endpoint", source)
			}
		}
		lc.note("", err)
		err = amqpErr("read "+source, err)
		var ae *AMQPError
		if !errors.As(err, &ae) || ae.Condition != string(goamqp.ErrCondLinkRedirect) {
			return err
		}
		out, err = s.parseRedirect(ae)
		return err
	})
	return out, err
}

// parseRedirect reads a redirect's info: hostname, network-host, port and
// address (the fields the Azure SDKs read).
func (s *ServiceClient) parseRedirect(ae *AMQPError) (redirectTarget, error) {
	str := func(k string) string { v, _ := ae.Info[k].(string); return v }
	host, netHost, addr := str("hostname"), str("network-host"), str("address")
	port, _ := toInt64(ae.Info["port"])
	if host == "" {
		host = netHost
	}
	if netHost == "" {
		netHost = host
	}
	u, err := url.Parse(addr)
	if addr == "" || err != nil || host == "" {
		return redirectTarget{}, fmt.Errorf("the hub's redirect lacks a usable hostname or address (info %v)", ae.Info)
	}
	scheme := u.Scheme
	if scheme != "amqp" {
		scheme = "amqps"
	}
	if port == 0 {
		if p, err := strconv.Atoi(u.Port()); err == nil {
			port = int64(p)
		} else {
			port = 5671
		}
	}
	t := redirectTarget{
		hostName: host,
		url:      scheme + "://" + net.JoinHostPort(netHost, strconv.FormatInt(port, 10)),
		base:     scheme + "://" + net.JoinHostPort(host, strconv.FormatInt(port, 10)),
		path:     strings.TrimPrefix(u.Path, "/"),
	}
	if m := managementAddress.FindStringSubmatch(addr); m != nil {
		t.entity = m[1]
	} else if i := strings.Index(t.path, "/"); i > 0 {
		t.entity = t.path[:i]
	}
	if o := s.opts.EventHubAddress; o != "" {
		ou, err := amqpURL(host, o)
		if err != nil {
			return redirectTarget{}, fmt.Errorf("EventHubAddress: %w", err)
		}
		t.url = ou
	}
	return t, nil
}

// ehToken signs Event Hubs tokens for audience: the resource encoded as
// is and the HMAC keyed with the key's text, the Event Hubs convention.
func (s *ServiceClient) ehToken(audience string) func(context.Context) (string, time.Time, error) {
	return func(context.Context) (string, time.Time, error) {
		exp := tokenExpiry(s.opts.TokenLifetime)
		return sas.SignEncoded(sas.EncodeURIComponent(audience), sas.EventHubsKey(s.key), s.policy, exp), exp, nil
	}
}

// authorizeOnce puts a token for audience on lc unless it already holds
// one.
func authorizeOnce(ctx context.Context, lc *liveConn, audience string, token func(context.Context) (string, time.Time, error)) error {
	key := "claim:" + audience
	lc.mu.Lock()
	_, done := lc.links[key]
	lc.mu.Unlock()
	if done {
		return nil
	}
	if err := lc.authorize(ctx, claim{audience: audience, token: token}); err != nil {
		return err
	}
	lc.mu.Lock()
	lc.links[key] = nopCloser{}
	lc.mu.Unlock()
	return nil
}

// readPartitionIDs asks the endpoint's $management node for the
// partition ids.
func (r *EventReader) readPartitionIDs(ctx context.Context) ([]string, error) {
	t := r.target
	audience := t.base + "/" + t.entity + "/$management"
	tokenFn := r.s.ehToken(audience)
	var ids []string
	err := doRetry(ctx, r.eh, r.s.retry, r.s.log, "read partition ids", func(ctx context.Context, lc *liveConn) error {
		// These links are not the connection's: bound them, since a Send
		// of go-amqp v1.7.0 may not return when the connection dies.
		ctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		if err := authorizeOnce(ctx, lc, audience, tokenFn); err != nil {
			return err
		}
		replyTo := "mgmt-" + newUUID()
		snd, err := lc.sess.NewSender(ctx, "$management", nil)
		if err != nil {
			lc.note("", err)
			return amqpErr("attach $management", err)
		}
		defer closeQuietly(snd)
		rcv, err := lc.sess.NewReceiver(ctx, "$management", &goamqp.ReceiverOptions{TargetAddress: replyTo, Credit: 1})
		if err != nil {
			lc.note("", err)
			return amqpErr("attach $management replies", err)
		}
		defer closeQuietly(rcv)
		tok, _, _ := tokenFn(ctx)
		id := newUUID()
		req := &goamqp.Message{
			Properties: &goamqp.MessageProperties{MessageID: id, ReplyTo: &replyTo},
			ApplicationProperties: map[string]any{
				"operation": "READ", "type": "com.microsoft:eventhub", "name": t.entity, "security_token": tok,
			},
			Value: goamqp.Null{},
		}
		if err := snd.Send(ctx, req, nil); err != nil {
			lc.note("", err)
			return amqpErr("$management READ", err)
		}
		for {
			m, err := rcv.Receive(ctx, nil)
			if err != nil {
				lc.note("", err)
				return amqpErr("$management READ reply", err)
			}
			_ = rcv.AcceptMessage(ctx, m)
			if m.Properties == nil || idString(m.Properties.CorrelationID) != id {
				continue
			}
			if status, desc := replyStatus(m); status/100 != 2 {
				return fmt.Errorf("$management READ of %s: %d %s", t.entity, status, desc)
			}
			body, _ := m.Value.(map[string]any)
			switch v := body["partition_ids"].(type) {
			case []string:
				ids = v
			case []any:
				for _, x := range v {
					ids = append(ids, fmt.Sprint(x))
				}
			}
			if len(ids) == 0 {
				return fmt.Errorf("$management READ of %s: no partition_ids in the reply", t.entity)
			}
			return nil
		}
	})
	return ids, err
}

// partitionTarget follows the hub's redirect for one partition.
func (r *EventReader) partitionTarget(ctx context.Context, p string) (redirectTarget, error) {
	r.mu.Lock()
	t, ok := r.addrs[p]
	r.mu.Unlock()
	if ok {
		return t, nil
	}
	src := "/messages/events/ConsumerGroups/" + url.PathEscape(r.opts.ConsumerGroup) + "/Partitions/" + url.PathEscape(p)
	t, err := r.s.redirect(ctx, src)
	if err != nil {
		return t, err
	}
	if t.url != r.target.url {
		// Keep one connection: the endpoint is the same for every
		// partition of a hub.
		t.url = r.target.url
	}
	r.mu.Lock()
	r.addrs[p] = t
	r.mu.Unlock()
	return t, nil
}

// runPartition reads one partition until the reader closes, reattaching
// after the last event read when the link or connection is lost.
func (r *EventReader) runPartition(p string, ready chan<- struct{}) {
	defer r.wg.Done()
	ctx := r.ctx
	start := r.opts.Start
	if ps, ok := r.opts.PartitionStart[p]; ok {
		start = ps
	}
	pr := &partitionRead{p: p, sel: start.selector(), minSeq: -1, ready: ready}
	for attempt := 0; ; {
		n, err := r.readPartition(ctx, pr)
		var ae *AMQPError
		if n == 0 && start.kind == startSequence && pr.minSeq < 0 && errors.As(err, &ae) && ae.Condition == "com.microsoft:argument-out-of-range" {
			// The partition has not reached the sequence number: read
			// from its end and skip what comes before the number.
			pr.sel, pr.minSeq = StartLatest().selector(), start.seq
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if n > 0 {
			attempt = 0
		}
		if !retryable(err) || !r.s.retry.allows(attempt) {
			r.setErr(fmt.Errorf("partition %s: %w", p, err))
			return
		}
		r.s.log.Info("amqphub client: partition reader lost; reattaching", "partition", p, "err", err)
		if !sleep(ctx, nil, r.s.retry.delay(attempt)) {
			return
		}
		attempt++
	}
}

// partitionRead is the state of one partition's reader.
type partitionRead struct {
	p string
	// sel is the filter of the next attach: the start, then "after the
	// last event returned".
	sel string
	// minSeq, when not negative, drops events numbered below it.
	minSeq int64
	// ready is signalled once, after the first attach.
	ready chan<- struct{}
}

// readPartition attaches one partition link and feeds its events until
// it fails; it returns how many events it read.
func (r *EventReader) readPartition(ctx context.Context, pr *partitionRead) (int, error) {
	p := pr.p
	t, err := r.partitionTarget(ctx, p)
	if err != nil {
		return 0, err
	}
	lc, err := r.eh.get(ctx)
	if err != nil {
		return 0, err
	}
	if err := authorizeOnce(ctx, lc, t.base+"/"+t.path, r.s.ehToken(t.base+"/"+t.path)); err != nil {
		return 0, err
	}
	rcv, err := lc.sess.NewReceiver(ctx, t.path, &goamqp.ReceiverOptions{
		Credit:  int32(r.opts.Prefetch),
		Filters: []goamqp.LinkFilter{goamqp.NewSelectorFilter(pr.sel)},
	})
	if err != nil {
		lc.note("", err)
		return 0, amqpErr("attach "+t.path, err)
	}
	defer closeQuietly(rcv)
	if pr.ready != nil {
		pr.ready <- struct{}{}
		pr.ready = nil
	}
	n := 0
	for {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			lc.note("", err)
			return n, amqpErr("read partition "+p, err)
		}
		_ = rcv.AcceptMessage(ctx, m)
		e := newEvent(p, m)
		n++
		pr.sel = fmt.Sprintf("amqp.annotation.x-opt-sequence-number > '%d'", e.SequenceNumber)
		if e.SequenceNumber < pr.minSeq {
			continue
		}
		select {
		case r.events <- e:
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}
