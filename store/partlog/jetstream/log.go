// Package jetstream implements partlog.Log on NATS JetStream, for hubs that
// run as several nodes on one NATS cluster: every partition is one stream,
// so every node reads the same records with the same numbers.
//
// # Layout
//
// Partition p is the stream Options.StreamPrefix+p (default
// "AMQPHUB_TELEMETRY_0", ...), which captures the single subject
// Options.SubjectPrefix+"."+p. Open creates missing streams with limits
// retention (MaxAge = Options.Retention, MaxBytes = Options.RetentionBytes,
// discard old), Options.Replicas replicas, direct gets allowed and message
// deletion denied, and records the partition count in the streams'
// metadata so that reopening with another count fails with
// partlog.ErrPartitionCountMismatch.
//
// # Numbering
//
// A record's sequence number is its stream sequence minus one (partlog
// counts from 0, JetStream from 1). The stream assigns it, so numbers are
// consecutive, identical on every node and kept across restarts and
// leader changes; retention removes records from the front, which moves
// BeginSeq and leaves the numbering alone. Deleting or recreating a stream
// by hand restarts the numbering and is not supported.
//
// A record's offset is its sequence number times OffsetStride. JetStream
// has no notion of a byte position that every replica agrees on and that
// concurrent appenders on different nodes could compute, so the offset is
// derived from the sequence number instead: strictly increasing, identical
// everywhere, and SeekOffset is arithmetic. Offsets are therefore not byte
// positions, and differ from those of the embedded backend (seglog) for the
// same records.
//
// # Enqueued time
//
// JetStream's own message timestamp is not returned in the publish
// acknowledgement and is the stream leader's wall clock, which can go back
// across a leader change or a clock step. The appender therefore stamps
// each record with max(now, the latest enqueued time it has seen in the
// partition): its own stamps and the records it observed through
// acknowledgements, reads and Info. The stamp is stored in front of the
// payload (a 9-byte prefix, see format.go), so every node reads the same
// time, and a reopened Log continues from the last stored stamp even if
// the clock went back.
//
// Limits: the time is non-decreasing within a partition as long as one Log
// at a time appends to it (one hub node per partition). When several nodes
// append to one partition at the same moment, their clocks and the order
// in which the stream receives their records decide, so a record can carry
// an earlier time than its predecessor by up to the nodes' clock skew;
// SeekTime then finds a record within that skew. A message published to
// the subject by something else than a Log has no prefix; it is read whole,
// with the stream's timestamp. After a restart, a partition whose records
// have all expired reports the stream's timestamp of its last message as
// LastEnqueuedTime (the appender's stamp is gone with the record).
//
// # Appends and durability
//
// AppendAsync stamps the record and publishes it with a reply subject
// under the partition's lock, so that calls in sequence reach the stream
// in call order; done runs when the stream's acknowledgement arrives (or
// fails after Options.AckTimeout, or at Close). Appends are never retried
// by the log, because a retry could overtake later records. What an
// acknowledgement means is JetStream's: on one server with file storage
// the record has been written to the stream's block file but is fsynced
// only every sync_interval (2 minutes by default), so a crash of the
// process loses nothing while a power cut can lose the last interval; with
// R3 in a cluster a quorum of replicas (2 of 3) has it, each fsyncing on
// the same interval, so losing any one node loses nothing, and only a
// power cut of a quorum at once can lose the last interval. The embedded
// backend (seglog) instead fsyncs before acknowledging. An append that fails with a timeout or a lost connection
// may still have been stored; it then appears in the partition although
// its done reported an error (at least once, never lost).
//
// # Reads
//
// Read uses batched direct gets ($JS.API.DIRECT.GET), which any replica
// may answer (NATS prefers the nearest). A replica can lag the leader for
// a moment, so when a direct get finds nothing where this Log knows a
// durable record exists (from its own acknowledgements or its tail
// watcher), Read asks the stream leader (the message get API) for it: an
// acknowledged record is readable at once from the node that appended it,
// and a waiter woken for a record can read it. SeekTime fetches, in one
// batch, the records from the first one the server stored at or after the
// time (JetStream's own time index) and looks for the answer among their
// stamps; when it is not there, a galloping then binary search over single
// gets finds it, so a bad guess costs O(log n) gets, never a scan.
// SeekOffset is arithmetic on the stream's bounds, and Info asks the
// stream leader for them.
//
// # Tail readers
//
// Wait is served by one headers-only ordered consumer per partition,
// started at the partition's first Wait, that delivers each stored
// record's sequence number (not its payload) to the Log as the stream
// stores it; this Log's own acknowledgements wake waiters too. Nothing
// polls.
package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/store/partlog"
)

// OffsetStride is the distance between the offsets of consecutive records:
// a record's offset is its sequence number times OffsetStride.
const OffsetStride = 1024

// Stream metadata keys written by Open.
const (
	metaPartitions = "amqphub.partitions"
	metaFormat     = "amqphub.format"
	formatValue    = "partlog/1"
)

// Log is a partlog.Log on NATS JetStream. Create it with Open.
type Log struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	opts       Options
	api        string // JetStream API subject prefix
	maxPayload int
	parts      []*partition

	ackPrefix string
	ackSub    *nats.Subscription

	readPrefix string
	readSub    *nats.Subscription
	readMu     sync.Mutex
	reads      map[uint64]chan *nats.Msg
	readID     atomic.Uint64

	closed    atomic.Bool
	closing   chan struct{}
	closeOnce sync.Once
	bgMu      sync.Mutex // orders goroutine starts before Close's wait
	bgClosed  bool
	bg        sync.WaitGroup
}

// goBackground runs fn on a goroutine that Close waits for, unless Close
// has begun.
func (l *Log) goBackground(fn func()) {
	l.bgMu.Lock()
	defer l.bgMu.Unlock()
	if l.bgClosed {
		return
	}
	l.bg.Add(1)
	go func() {
		defer l.bg.Done()
		fn()
	}()
}

var _ partlog.Log = (*Log)(nil)

// Open opens (creating them if needed) the streams of a log with
// opts.Partitions partitions through nc, which must stay connected while
// the Log is used; Close does not close it. ctx bounds the stream set-up.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Log, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("jetstream: nil NATS connection")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	l := &Log{
		nc:      nc,
		js:      js,
		opts:    o,
		api:     jetstream.DefaultAPIPrefix,
		reads:   map[uint64]chan *nats.Msg{},
		closing: make(chan struct{}),
	}
	limit := int(nc.MaxPayload()) - recordPrefix
	switch {
	case o.MaxPayload == 0:
		l.maxPayload = max(limit, 0)
	case o.MaxPayload > limit:
		return nil, fmt.Errorf("jetstream: max payload %d exceeds the server's limit %d (max_payload %d less the %d-byte record prefix)",
			o.MaxPayload, limit, nc.MaxPayload(), recordPrefix)
	default:
		l.maxPayload = o.MaxPayload
	}
	n := o.Partitions
	if n == 0 {
		if n, err = l.storedPartitions(ctx); err != nil {
			return nil, err
		}
		l.opts.Partitions = n
	}
	for i := range n {
		if err := l.ensureStream(ctx, i, n); err != nil {
			return nil, err
		}
	}
	// The inboxes exist before any partition, whose reply subjects use them.
	if err := l.subscribe(); err != nil {
		l.unsubscribe()
		return nil, err
	}
	for i := range n {
		l.parts = append(l.parts, newPartition(l, i))
	}
	for _, p := range l.parts {
		if err := p.loadTail(ctx); err != nil {
			l.unsubscribe()
			return nil, err
		}
	}
	l.goBackground(l.sweep)
	return l, nil
}

func (l *Log) streamName(p int) string { return l.opts.StreamPrefix + strconv.Itoa(p) }
func (l *Log) subject(p int) string    { return l.opts.SubjectPrefix + "." + strconv.Itoa(p) }

// storedPartitions reads the partition count recorded in partition 0's
// stream.
func (l *Log) storedPartitions(ctx context.Context) (int, error) {
	s, err := l.js.Stream(ctx, l.streamName(0))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, fmt.Errorf("jetstream: no stream %s: a new log needs Options.Partitions", l.streamName(0))
	}
	if err != nil {
		return 0, fmt.Errorf("jetstream: look up stream %s: %w", l.streamName(0), err)
	}
	return recordedPartitions(s.CachedInfo())
}

func recordedPartitions(si *jetstream.StreamInfo) (int, error) {
	if si.Config.Metadata[metaFormat] != formatValue {
		return 0, fmt.Errorf("jetstream: stream %s was not created by this log (metadata %s=%q)",
			si.Config.Name, metaFormat, si.Config.Metadata[metaFormat])
	}
	n, err := strconv.Atoi(si.Config.Metadata[metaPartitions])
	if err != nil || n < 1 || n > partlog.MaxPartitions {
		return 0, fmt.Errorf("jetstream: stream %s records an invalid partition count %q",
			si.Config.Name, si.Config.Metadata[metaPartitions])
	}
	return n, nil
}

func (l *Log) streamConfig(p, n int) jetstream.StreamConfig {
	maxBytes := int64(-1)
	if l.opts.RetentionBytes > 0 {
		maxBytes = l.opts.RetentionBytes
	}
	return jetstream.StreamConfig{
		Name:        l.streamName(p),
		Description: fmt.Sprintf("amqphub telemetry partition %d of %d", p, n),
		Subjects:    []string{l.subject(p)},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      l.opts.maxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		MaxMsgSize:  -1,
		Storage:     l.opts.Storage,
		Replicas:    l.opts.Replicas,
		AllowDirect: true,
		// Interior deletes would leave holes in the numbering.
		DenyDelete: true,
		Metadata: map[string]string{
			metaFormat:     formatValue,
			metaPartitions: strconv.Itoa(n),
		},
	}
}

// ensureStream creates partition p's stream or checks and updates an
// existing one.
func (l *Log) ensureStream(ctx context.Context, p, n int) error {
	want := l.streamConfig(p, n)
	for attempt := 0; ; attempt++ {
		s, err := l.js.Stream(ctx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = l.js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt == 0 {
				continue // another node created it meanwhile: check it
			}
			if err != nil {
				return fmt.Errorf("jetstream: create stream %s: %w", want.Name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("jetstream: look up stream %s: %w", want.Name, err)
		}
		return l.checkStream(ctx, s.CachedInfo(), want, n)
	}
}

func (l *Log) checkStream(ctx context.Context, si *jetstream.StreamInfo, want jetstream.StreamConfig, n int) error {
	have := si.Config
	got, err := recordedPartitions(si)
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("jetstream: stream %s belongs to a log of %d partitions, asked for %d: %w",
			have.Name, got, n, partlog.ErrPartitionCountMismatch)
	}
	if len(have.Subjects) != 1 || have.Subjects[0] != want.Subjects[0] {
		return fmt.Errorf("jetstream: stream %s captures %q, want [%q]", have.Name, have.Subjects, want.Subjects[0])
	}
	if have.Storage != want.Storage {
		return fmt.Errorf("jetstream: stream %s uses %v storage, asked for %v (JetStream cannot change it)",
			have.Name, have.Storage, want.Storage)
	}
	if have.Retention != want.Retention || have.Discard != want.Discard || have.MaxAge != want.MaxAge ||
		have.MaxBytes != want.MaxBytes || have.MaxMsgs != want.MaxMsgs || have.Replicas != want.Replicas ||
		!have.AllowDirect || !have.DenyDelete {
		upd := have
		upd.Retention, upd.Discard, upd.MaxAge, upd.MaxBytes = want.Retention, want.Discard, want.MaxAge, want.MaxBytes
		upd.MaxMsgs, upd.Replicas, upd.AllowDirect, upd.DenyDelete = want.MaxMsgs, want.Replicas, true, true
		if _, err := l.js.UpdateStream(ctx, upd); err != nil {
			return fmt.Errorf("jetstream: update stream %s: %w", have.Name, err)
		}
		l.opts.Logger.Info("jetstream: updated telemetry stream limits", "stream", have.Name,
			"max_age", want.MaxAge, "max_bytes", want.MaxBytes, "replicas", want.Replicas)
	}
	return nil
}

// subscribe sets up the wildcard inboxes that receive publish
// acknowledgements and direct-get replies.
func (l *Log) subscribe() error {
	l.ackPrefix = l.nc.NewRespInbox()
	sub, err := l.nc.Subscribe(l.ackPrefix+".*.*", l.onAck)
	if err != nil {
		return fmt.Errorf("jetstream: subscribe to acknowledgements: %w", err)
	}
	l.ackSub = sub
	l.readPrefix = l.nc.NewRespInbox()
	if sub, err = l.nc.Subscribe(l.readPrefix+".*", l.onReply); err != nil {
		return fmt.Errorf("jetstream: subscribe to replies: %w", err)
	}
	l.readSub = sub
	// Back-pressure is ours (MaxInFlight, one reply batch per read); a
	// client-side limit would drop acknowledgements instead.
	for _, s := range []*nats.Subscription{l.ackSub, l.readSub} {
		if err := s.SetPendingLimits(-1, -1); err != nil {
			return fmt.Errorf("jetstream: subscription limits: %w", err)
		}
	}
	return nil
}

func (l *Log) unsubscribe() {
	for _, s := range []*nats.Subscription{l.ackSub, l.readSub} {
		if s != nil {
			_ = s.Unsubscribe()
		}
	}
}

// Partitions returns the fixed number of partitions.
func (l *Log) Partitions() int { return len(l.parts) }

// part returns partition i or an error matching ErrInvalidPartition or
// ErrClosed.
func (l *Log) part(i int) (*partition, error) {
	if l.closed.Load() {
		return nil, partlog.ErrClosed
	}
	if i < 0 || i >= len(l.parts) {
		return nil, fmt.Errorf("jetstream: partition %d of %d: %w", i, len(l.parts), partlog.ErrInvalidPartition)
	}
	return l.parts[i], nil
}

// Close waits (up to Options.AckTimeout) for the acknowledgements of the
// appends in flight, fails the rest with ErrClosed, wakes all waiters with
// ErrClosed and stops the log's subscriptions and consumers. Every done has
// returned when Close returns (so a done must not call Close). It does not
// close the NATS connection.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		for _, p := range l.parts {
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
		}
		close(l.closing) // wakes appenders blocked on a full window, and waiters
		deadline := time.Now().Add(l.opts.AckTimeout)
		for _, p := range l.parts {
			p.drain(deadline)
		}
		var stops sync.WaitGroup
		for _, p := range l.parts {
			p.failAll(partlog.ErrClosed)
			p.waitCalls() // an acknowledgement may be completing right now
			// In parallel: each stop may wait for a server that is gone.
			stops.Go(p.stopWatch)
		}
		stops.Wait()
		l.unsubscribe()
		l.bgMu.Lock()
		l.bgClosed = true
		l.bgMu.Unlock()
		l.bg.Wait()
	})
	return nil
}

// apiError is the error object of a JetStream API response.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s (code %d, error code %d)", e.Description, e.Code, e.ErrCode)
}

// apiRequest sends a JetStream API request with body and decodes the
// response into resp; errOf returns the response's error object, if any.
// The request is bounded by ctx and by Options.RequestTimeout.
func (l *Log) apiRequest(ctx context.Context, subject string, body []byte, resp any, errOf func() *apiError) error {
	ctx, cancel := context.WithTimeout(ctx, l.opts.RequestTimeout)
	defer cancel()
	msg, err := l.nc.RequestWithContext(ctx, subject, body)
	if err != nil {
		return fmt.Errorf("request %s: %w", subject, err)
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("decode response of %s: %w", subject, err)
	}
	if e := errOf(); e != nil {
		return e
	}
	return nil
}
