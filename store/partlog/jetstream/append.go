package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/store/partlog"
)

// ErrAckTimeout means the stream did not acknowledge an append within
// Options.AckTimeout. The record may still have been stored.
var ErrAckTimeout = errors.New("jetstream: append not acknowledged in time")

// ErrDisconnected means the NATS connection an append was sent on dropped
// before its acknowledgement came (FailInFlight).
var ErrDisconnected = errors.New("jetstream: NATS connection lost before the append was acknowledged")

// pending is an append sent to the stream and not yet acknowledged.
type pending struct {
	id     uint64
	active bool
	done   func(partlog.Entry, error)
	stamp  int64 // enqueued time, Unix ms
	size   int
	sent   time.Time
}

// partition is one stream's state on this node.
type partition struct {
	l       *Log
	id      int
	stream  string
	subject string
	direct  string // direct-get subject
	msgGet  string // message-get API subject (answered by the leader)
	info    string // stream-info API subject
	ackBase string // reply subject prefix for this partition's appends

	mu     sync.Mutex
	closed bool
	ring   []pending     // in-flight appends, indexed by id % len(ring)
	nextID uint64        // id of the next append (ids start at 1)
	oldest uint64        // no append below this id is in flight
	count  int           // appends in flight
	bytes  int           // payload bytes in flight
	calls  int           // appends taken whose done has not returned yet
	space  chan struct{} // closed and replaced when count or calls drop, if waited
	waited bool          // someone waits on space

	scratch  []byte // the message being published (the client copies it)
	stamp    int64  // latest enqueued time stamped or seen: the floor of the next stamp
	last     int64  // highest durable sequence number known, -1 if none
	lastTime int64  // enqueued time of last, if lastOK
	lastOK   bool   // lastTime is known
	notify   chan struct{}

	watch watcher
}

func newPartition(l *Log, i int) *partition {
	name := l.streamName(i)
	return &partition{
		l:       l,
		id:      i,
		stream:  name,
		subject: l.subject(i),
		direct:  l.api + "DIRECT.GET." + name,
		msgGet:  l.api + "STREAM.MSG.GET." + name,
		info:    l.api + "STREAM.INFO." + name,
		ackBase: l.ackPrefix + "." + strconv.Itoa(i) + ".",
		ring:    make([]pending, l.opts.MaxInFlight),
		nextID:  1,
		oldest:  1,
		space:   make(chan struct{}),
		last:    -1,
		notify:  make(chan struct{}),
	}
}

// entry builds the partlog entry of stream sequence jsSeq (1-based).
func entry(jsSeq uint64, enqueued int64) partlog.Entry {
	seq := int64(jsSeq) - 1
	return partlog.Entry{Seq: seq, Offset: seq * OffsetStride, EnqueuedTime: enqueued}
}

// observe records that seq, enqueued at t, is durable, waking waiters if
// it is past the known tail.
func (p *partition) observe(seq, t int64) {
	p.mu.Lock()
	p.observeLocked(seq, t)
	p.mu.Unlock()
}

func (p *partition) observeLocked(seq, t int64) {
	if t > p.stamp {
		p.stamp = t
	}
	if seq > p.last {
		p.last, p.lastTime, p.lastOK = seq, t, true
		close(p.notify)
		p.notify = make(chan struct{})
	} else if seq == p.last && !p.lastOK {
		p.lastTime, p.lastOK = t, true
	}
}

// observeSeq records that seq is durable without knowing its time (the
// watcher sees headers only).
func (p *partition) observeSeq(seq int64) {
	p.mu.Lock()
	if seq > p.last {
		p.last, p.lastOK = seq, false
		close(p.notify)
		p.notify = make(chan struct{})
	}
	p.mu.Unlock()
}

// tail returns the highest durable sequence number this Log knows of.
func (p *partition) tail() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// AppendAsync queues payload for partition and returns once it is sent;
// done runs when the stream acknowledges it. See partlog.Log.
func (l *Log) AppendAsync(partition int, payload []byte, done func(partlog.Entry, error)) error {
	return l.appendAsync(context.Background(), partition, payload, done)
}

// Append sends payload and waits for the stream's acknowledgement.
func (l *Log) Append(ctx context.Context, partition int, payload []byte) (partlog.Entry, error) {
	if err := ctx.Err(); err != nil {
		return partlog.Entry{}, err
	}
	type result struct {
		e   partlog.Entry
		err error
	}
	ch := make(chan result, 1)
	err := l.appendAsync(ctx, partition, payload, func(e partlog.Entry, err error) { ch <- result{e, err} })
	if err != nil {
		return partlog.Entry{}, err
	}
	select {
	case r := <-ch:
		return r.e, r.err
	case <-ctx.Done():
		return partlog.Entry{}, ctx.Err()
	}
}

func (l *Log) appendAsync(ctx context.Context, partition int, payload []byte, done func(partlog.Entry, error)) error {
	p, err := l.part(partition)
	if err != nil {
		return err
	}
	if len(payload) > l.maxPayload {
		return fmt.Errorf("jetstream: partition %d: payload of %d bytes exceeds %d: %w",
			partition, len(payload), l.maxPayload, partlog.ErrPayloadTooLarge)
	}
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return fmt.Errorf("jetstream: partition %d: %w", partition, partlog.ErrClosed)
		}
		slot := &p.ring[p.nextID%uint64(len(p.ring))]
		// A payload larger than the byte window still goes alone.
		fits := p.count == 0 || p.bytes+len(payload) <= l.opts.MaxInFlightBytes
		if !slot.active && p.count < len(p.ring) && fits {
			break
		}
		space := p.waitSpaceLocked()
		p.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return ctx.Err()
		case <-l.closing:
		}
		p.mu.Lock()
	}
	id := p.nextID
	now := l.opts.Now().UnixMilli()
	stamp := max(now, p.stamp)
	p.scratch = putRecord(p.scratch, stamp, payload)
	// Publishing under the lock keeps the wire order equal to the order of
	// ids and stamps; the client copies the message into its buffer here,
	// so scratch is free again when PublishRequest returns.
	if err := l.nc.PublishRequest(p.subject, p.ackBase+strconv.FormatUint(id, 10), p.scratch); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("jetstream: partition %d: publish: %w", partition, err)
	}
	if cap(p.scratch) > maxScratch {
		p.scratch = nil // do not pin a large payload's buffer per partition
	}
	p.nextID++
	p.stamp = stamp
	p.count++
	p.bytes += len(payload)
	p.ring[id%uint64(len(p.ring))] = pending{id: id, active: true, done: done, stamp: stamp, size: len(payload), sent: time.Now()}
	p.mu.Unlock()
	return nil
}

// maxScratch is the largest publish buffer a partition keeps between
// appends.
const maxScratch = 64 << 10

// takeLocked removes in-flight append id and returns it. The caller must
// then call complete, so that Close knows when every done has returned.
func (p *partition) takeLocked(id uint64) (pending, bool) {
	slot := &p.ring[id%uint64(len(p.ring))]
	if !slot.active || slot.id != id {
		return pending{}, false
	}
	pd := *slot
	*slot = pending{}
	p.count--
	p.bytes -= pd.size
	p.calls++
	p.signalLocked()
	return pd, true
}

// waitSpaceLocked returns the channel closed at the next completion.
func (p *partition) waitSpaceLocked() chan struct{} {
	p.waited = true
	return p.space
}

// signalLocked wakes the waiters on space; completions nobody waits for
// cost nothing.
func (p *partition) signalLocked() {
	if p.waited {
		close(p.space)
		p.space = make(chan struct{})
		p.waited = false
	}
}

// complete runs the done of a taken append.
func (p *partition) complete(pd pending, e partlog.Entry, err error) {
	if pd.done != nil {
		pd.done(e, err)
	}
	p.mu.Lock()
	p.calls--
	p.signalLocked()
	p.mu.Unlock()
}

// pubAck is the stream's answer to a publish.
type pubAck struct {
	Stream    string    `json:"stream"`
	Seq       uint64    `json:"seq"`
	Duplicate bool      `json:"duplicate"`
	Error     *apiError `json:"error"`
}

// onAck handles a publish acknowledgement; its subject ends in
// ".<partition>.<id>".
func (l *Log) onAck(m *nats.Msg) {
	rest := m.Subject[len(l.ackPrefix)+1:]
	dot := strings.IndexByte(rest, '.')
	if dot < 0 {
		return
	}
	pi, err1 := strconv.Atoi(rest[:dot])
	id, err2 := strconv.ParseUint(rest[dot+1:], 10, 64)
	if err1 != nil || err2 != nil || pi < 0 || pi >= len(l.parts) {
		return
	}
	p := l.parts[pi]
	ack, ackErr := p.parseAck(m)
	p.mu.Lock()
	pd, ok := p.takeLocked(id)
	if ok && ackErr == nil {
		p.observeLocked(int64(ack.Seq)-1, pd.stamp)
	}
	p.mu.Unlock()
	if !ok {
		return // timed out or failed at Close already
	}
	if ackErr != nil {
		p.complete(pd, partlog.Entry{}, ackErr)
		return
	}
	p.complete(pd, entry(ack.Seq, pd.stamp), nil)
}

func (p *partition) parseAck(m *nats.Msg) (pubAck, error) {
	if seq, ok := p.parsePlainAck(m.Data); ok {
		return pubAck{Stream: p.stream, Seq: seq}, nil
	}
	var ack pubAck
	if len(m.Data) == 0 {
		if st := m.Header.Get("Status"); st != "" {
			if st == "503" {
				return ack, fmt.Errorf("jetstream: partition %d: append not stored: no stream %s is reachable (no responders)", p.id, p.stream)
			}
			return ack, fmt.Errorf("jetstream: partition %d: append not stored: status %s %s", p.id, st, m.Header.Get("Description"))
		}
	}
	if err := json.Unmarshal(m.Data, &ack); err != nil {
		return ack, fmt.Errorf("jetstream: partition %d: undecodable publish acknowledgement %q: %w", p.id, m.Data, err)
	}
	if ack.Error != nil {
		return ack, fmt.Errorf("jetstream: partition %d: append refused by stream %s: %w", p.id, p.stream, ack.Error)
	}
	if ack.Stream != p.stream || ack.Seq == 0 || ack.Duplicate {
		return ack, fmt.Errorf("jetstream: partition %d: unexpected publish acknowledgement %q", p.id, m.Data)
	}
	return ack, nil
}

// parsePlainAck recognises the usual acknowledgement,
// {"stream":"<stream>","seq":<n>}, without the JSON decoder; anything else
// (errors, extra fields) goes to the decoder.
func (p *partition) parsePlainAck(b []byte) (uint64, bool) {
	const head, mid = `{"stream":"`, `","seq":`
	if len(b) < len(head)+len(p.stream)+len(mid)+2 || string(b[:len(head)]) != head {
		return 0, false
	}
	b = b[len(head):]
	if string(b[:len(p.stream)]) != p.stream {
		return 0, false
	}
	b = b[len(p.stream):]
	if string(b[:len(mid)]) != mid || b[len(b)-1] != '}' {
		return 0, false
	}
	seq, err := strconv.ParseUint(string(b[len(mid):len(b)-1]), 10, 64)
	if err != nil || seq == 0 {
		return 0, false
	}
	return seq, true
}

// sweep fails appends whose acknowledgement is overdue.
func (l *Log) sweep() {
	tick := min(max(l.opts.AckTimeout/10, 10*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-l.closing:
			return
		case <-t.C:
			deadline := time.Now().Add(-l.opts.AckTimeout)
			for _, p := range l.parts {
				p.expire(deadline)
			}
		}
	}
}

// expire fails the appends of p sent before deadline.
func (p *partition) expire(deadline time.Time) {
	var failed []pending
	p.mu.Lock()
	for ; p.oldest < p.nextID; p.oldest++ {
		slot := &p.ring[p.oldest%uint64(len(p.ring))]
		if !slot.active || slot.id != p.oldest {
			continue
		}
		if slot.sent.After(deadline) {
			break
		}
		pd, _ := p.takeLocked(p.oldest)
		failed = append(failed, pd)
	}
	p.mu.Unlock()
	if len(failed) > 0 {
		p.l.opts.Logger.Warn("jetstream: appends not acknowledged in time", "partition", p.id,
			"count", len(failed), "timeout", p.l.opts.AckTimeout)
	}
	for _, pd := range failed {
		p.complete(pd, partlog.Entry{}, fmt.Errorf("jetstream: partition %d: %w after %v", p.id, ErrAckTimeout, p.l.opts.AckTimeout))
	}
}

// drain waits until nothing is in flight and no done is running, or
// deadline passes.
func (p *partition) drain(deadline time.Time) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		p.mu.Lock()
		idle, space := p.count == 0 && p.calls == 0, p.waitSpaceLocked()
		p.mu.Unlock()
		if idle {
			return
		}
		select {
		case <-space:
		case <-timer.C:
			return
		}
	}
}

// waitCalls waits until every done taken so far has returned; done must
// return quickly, so this has no deadline.
func (p *partition) waitCalls() {
	for {
		p.mu.Lock()
		n, space := p.calls, p.waitSpaceLocked()
		p.mu.Unlock()
		if n == 0 {
			return
		}
		<-space
	}
}

// FailInFlight fails every append still waiting for its acknowledgement
// with an error wrapping ErrDisconnected and cause. Call it when the NATS
// connection drops: a reply to a publish sent on the old connection never
// comes, so without this the appends wait out AckTimeout and their
// senders learn of the loss seconds late. A failed append may still have
// been stored (at least once), as with any unacknowledged publish.
func (l *Log) FailInFlight(cause error) {
	err := fmt.Errorf("%w: %v", ErrDisconnected, cause)
	for _, p := range l.parts {
		p.failAll(err)
	}
}

// failAll completes every append still in flight with err.
func (p *partition) failAll(err error) {
	var failed []pending
	p.mu.Lock()
	for id := p.oldest; id < p.nextID; id++ {
		if pd, ok := p.takeLocked(id); ok {
			failed = append(failed, pd)
		}
	}
	p.oldest = p.nextID
	p.mu.Unlock()
	for _, pd := range failed {
		p.complete(pd, partlog.Entry{}, fmt.Errorf("jetstream: partition %d: append not acknowledged: %w", p.id, err))
	}
}

// loadTail initialises the known tail and the stamp floor from the stream,
// so that enqueued times keep increasing across restarts even if the clock
// went back.
func (p *partition) loadTail(ctx context.Context) error {
	st, err := p.state(ctx)
	if err != nil {
		return err
	}
	if st.LastSeq == 0 {
		return nil
	}
	t, err := p.lastEnqueued(st)
	if err != nil {
		return err
	}
	p.observe(int64(st.LastSeq)-1, t)
	return nil
}
