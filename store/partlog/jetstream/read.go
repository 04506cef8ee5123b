package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/store/partlog"
)

// JetStream API error code for a message get that found nothing.
const errCodeNoMessage = 10037

// directReq is a direct-get request ($JS.API.DIRECT.GET.<stream>).
type directReq struct {
	Seq       uint64     `json:"seq,omitempty"`
	Batch     int        `json:"batch,omitempty"`
	MaxBytes  int        `json:"max_bytes,omitempty"`
	StartTime *time.Time `json:"start_time,omitempty"`
	NextFor   string     `json:"next_by_subj,omitempty"`
}

// rawRecord is a stored message as a get returned it.
type rawRecord struct {
	jsSeq    uint64
	enqueued int64
	payload  []byte
}

func (r rawRecord) record() partlog.Record {
	return partlog.Record{Entry: entry(r.jsSeq, r.enqueued), Payload: r.payload}
}

// onReply routes a direct-get reply, whose subject ends in ".<request id>",
// to the waiting request.
func (l *Log) onReply(m *nats.Msg) {
	id, err := strconv.ParseUint(m.Subject[len(l.readPrefix)+1:], 10, 64)
	if err != nil {
		return
	}
	l.readMu.Lock()
	ch := l.reads[id]
	l.readMu.Unlock()
	if ch == nil {
		return // the request already ended (limit reached, timeout)
	}
	select {
	case ch <- m:
	default:
		// More replies than asked for; the request stops at its limit.
	}
}

// directGet sends a direct get and hands each returned message to fn until
// fn returns false or the server signals the end. It reports whether any
// message was returned. A request with Batch 0 ends after one message.
func (l *Log) directGet(subject string, req directReq, fn func(*nats.Msg) bool) (bool, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return false, fmt.Errorf("encode direct get: %w", err)
	}
	id := l.readID.Add(1)
	ch := make(chan *nats.Msg, max(req.Batch, 1)+2)
	l.readMu.Lock()
	l.reads[id] = ch
	l.readMu.Unlock()
	defer func() {
		l.readMu.Lock()
		delete(l.reads, id)
		l.readMu.Unlock()
	}()
	if err := l.nc.PublishRequest(subject, l.readPrefix+"."+strconv.FormatUint(id, 10), body); err != nil {
		return false, fmt.Errorf("direct get on %s: %w", subject, err)
	}
	timer := time.NewTimer(l.opts.RequestTimeout)
	defer timer.Stop()
	got := false
	for {
		select {
		case m := <-ch:
			if st := m.Header.Get("Status"); st != "" && len(m.Data) == 0 {
				switch st {
				case "404", "204": // not found; end of batch
					return got, nil
				case "503":
					return got, fmt.Errorf("direct get on %s: no responders (stream missing or unavailable)", subject)
				default:
					return got, fmt.Errorf("direct get on %s: status %s %s", subject, st, m.Header.Get("Description"))
				}
			}
			got = true
			if !fn(m) || req.Batch == 0 {
				return true, nil
			}
		case <-timer.C:
			return got, fmt.Errorf("direct get on %s: no answer within %v", subject, l.opts.RequestTimeout)
		case <-l.closing:
			return got, partlog.ErrClosed
		}
	}
}

// decodeDirect extracts the record from a direct-get reply.
func decodeDirect(m *nats.Msg) (rawRecord, error) {
	seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil || seq == 0 {
		return rawRecord{}, fmt.Errorf("direct get reply without a valid Nats-Sequence header (%q)", m.Header.Get("Nats-Sequence"))
	}
	t, payload, err := parseRecord(m.Data, func() (time.Time, error) {
		return time.Parse(time.RFC3339Nano, m.Header.Get("Nats-Time-Stamp"))
	})
	if err != nil {
		return rawRecord{}, fmt.Errorf("stream sequence %d: %w", seq, err)
	}
	return rawRecord{jsSeq: seq, enqueued: t, payload: payload}, nil
}

// msgGetResponse is the answer of the message-get API.
type msgGetResponse struct {
	Message *struct {
		Seq  uint64    `json:"seq"`
		Data []byte    `json:"data"`
		Time time.Time `json:"time"`
	} `json:"message"`
	Error *apiError `json:"error"`
}

// leaderGet asks the stream leader, which holds every acknowledged record,
// for the record at stream sequence jsSeq (or the first one after it when
// next is set).
func (p *partition) leaderGet(jsSeq uint64, next bool) (rawRecord, bool, error) {
	req := directReq{Seq: jsSeq}
	if next {
		req.NextFor = p.subject
	}
	body, err := json.Marshal(req)
	if err != nil {
		return rawRecord{}, false, fmt.Errorf("encode message get: %w", err)
	}
	var resp msgGetResponse
	if err := p.l.apiRequest(context.Background(), p.msgGet, body, &resp, func() *apiError { return resp.Error }); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && (ae.ErrCode == errCodeNoMessage || ae.Code == 404) {
			return rawRecord{}, false, nil
		}
		return rawRecord{}, false, fmt.Errorf("jetstream: partition %d: message get: %w", p.id, err)
	}
	if resp.Message == nil || resp.Message.Seq == 0 {
		return rawRecord{}, false, fmt.Errorf("jetstream: partition %d: message get returned no message", p.id)
	}
	msg := resp.Message
	t, payload, err := parseRecord(msg.Data, func() (time.Time, error) { return msg.Time, nil })
	if err != nil {
		return rawRecord{}, false, fmt.Errorf("jetstream: partition %d: stream sequence %d: %w", p.id, msg.Seq, err)
	}
	return rawRecord{jsSeq: msg.Seq, enqueued: t, payload: payload}, true, nil
}

// getOne returns the record at stream sequence jsSeq. A replica that does
// not have it yet while the stream's last sequence known to the caller
// covers it is bypassed by asking the leader.
func (p *partition) getOne(jsSeq, knownLast uint64) (rawRecord, bool, error) {
	var rec rawRecord
	var decErr error
	found, err := p.l.directGet(p.direct, directReq{Seq: jsSeq}, func(m *nats.Msg) bool {
		rec, decErr = decodeDirect(m)
		return false
	})
	if err != nil {
		return rec, false, fmt.Errorf("jetstream: partition %d: %w", p.id, err)
	}
	if decErr != nil {
		return rec, false, fmt.Errorf("jetstream: partition %d: %w", p.id, decErr)
	}
	if !found && jsSeq <= knownLast {
		return p.leaderGet(jsSeq, false)
	}
	return rec, found, nil
}

// Read returns durable records of partition from fromSeq on. See
// partlog.Log.
func (l *Log) Read(partition int, fromSeq int64, maxRecords, maxBytes int, dst []partlog.Record) ([]partlog.Record, error) {
	p, err := l.part(partition)
	if err != nil {
		return dst, err
	}
	if maxRecords <= 0 || fromSeq >= math.MaxInt64-1 {
		return dst, nil
	}
	start := uint64(max(fromSeq, 0)) + 1
	batch := min(maxRecords, l.opts.MaxReadBatch)
	reqBytes := maxBytes
	if reqBytes <= 0 {
		reqBytes = l.opts.MaxReadBytes
	}
	n0, total := len(dst), 0
	var decErr error
	found, err := l.directGet(p.direct, directReq{Seq: start, Batch: batch, MaxBytes: reqBytes}, func(m *nats.Msg) bool {
		rec, err := decodeDirect(m)
		if err != nil {
			decErr = err
			return false
		}
		n := len(dst) - n0
		// The server may send one message past its byte budget.
		if n >= batch || (n > 0 && maxBytes > 0 && total+len(rec.payload) > maxBytes) {
			return false
		}
		dst = append(dst, rec.record())
		total += len(rec.payload)
		return true
	})
	if err != nil {
		return dst[:n0], fmt.Errorf("jetstream: partition %d: read from %d: %w", partition, fromSeq, err)
	}
	if decErr != nil {
		return dst[:n0], fmt.Errorf("jetstream: partition %d: read from %d: %w", partition, fromSeq, decErr)
	}
	if !found && int64(start)-1 <= p.tail() {
		// The answering replica lags behind an acknowledged record.
		rec, ok, err := p.leaderGet(start, true)
		if err != nil {
			return dst[:n0], err
		}
		if ok {
			dst = append(dst, rec.record())
		}
	}
	if len(dst) > n0 {
		last := dst[len(dst)-1]
		p.observe(last.Seq, last.EnqueuedTime)
	}
	return dst, nil
}

// streamState is the part of the stream-info answer the log uses.
type streamState struct {
	Msgs     uint64    `json:"messages"`
	FirstSeq uint64    `json:"first_seq"`
	LastSeq  uint64    `json:"last_seq"`
	LastTime time.Time `json:"last_ts"`
}

type streamInfoResponse struct {
	State *streamState `json:"state"`
	Error *apiError    `json:"error"`
}

// state asks the stream leader for the stream's bounds.
func (p *partition) state(ctx context.Context) (streamState, error) {
	var resp streamInfoResponse
	if err := p.l.apiRequest(ctx, p.info, nil, &resp, func() *apiError { return resp.Error }); err != nil {
		return streamState{}, fmt.Errorf("jetstream: partition %d: stream info: %w", p.id, err)
	}
	if resp.State == nil {
		return streamState{}, fmt.Errorf("jetstream: partition %d: stream info without state", p.id)
	}
	return *resp.State, nil
}

// bounds returns the first retained sequence number and LastSeq+1, in
// partlog numbering.
func (st streamState) bounds() (begin, next int64) {
	next = int64(st.LastSeq)
	if st.Msgs == 0 || st.FirstSeq == 0 {
		return next, next
	}
	return int64(st.FirstSeq) - 1, next
}

// lastEnqueued returns the enqueued time of the stream's last message.
func (p *partition) lastEnqueued(st streamState) (int64, error) {
	last := int64(st.LastSeq) - 1
	p.mu.Lock()
	if p.last == last && p.lastOK {
		t := p.lastTime
		p.mu.Unlock()
		return t, nil
	}
	p.mu.Unlock()
	rec, ok, err := p.getOne(st.LastSeq, st.LastSeq)
	if err != nil {
		return 0, err
	}
	if !ok {
		// Expired, and this Log never saw it: the stream's own timestamp
		// is all that is left.
		return max(st.LastTime.UnixMilli(), 0), nil
	}
	return rec.enqueued, nil
}

// Info returns the partition's bounds. See partlog.Info.
func (l *Log) Info(partition int) (partlog.Info, error) {
	p, err := l.part(partition)
	if err != nil {
		return partlog.Info{}, err
	}
	st, err := p.state(context.Background())
	if err != nil {
		return partlog.Info{}, err
	}
	if st.LastSeq == 0 {
		return partlog.Info{BeginSeq: 0, LastSeq: -1, LastOffset: -1, Empty: true}, nil
	}
	t, err := p.lastEnqueued(st)
	if err != nil {
		return partlog.Info{}, err
	}
	last := int64(st.LastSeq) - 1
	p.observe(last, t)
	begin, next := st.bounds()
	return partlog.Info{
		BeginSeq:         begin,
		LastSeq:          last,
		LastOffset:       last * OffsetStride,
		LastEnqueuedTime: t,
		Empty:            begin == next,
	}, nil
}

// SeekOffset returns the first retained sequence number whose offset is >=
// offset: offsets are Seq*OffsetStride, so this is arithmetic on the
// stream's bounds.
func (l *Log) SeekOffset(partition int, offset int64) (int64, error) {
	p, err := l.part(partition)
	if err != nil {
		return 0, err
	}
	st, err := p.state(context.Background())
	if err != nil {
		return 0, err
	}
	begin, next := st.bounds()
	var seq int64
	if offset > 0 {
		seq = offset / OffsetStride
		if offset%OffsetStride != 0 {
			seq++
		}
	}
	return min(max(seq, begin), next), nil
}

// maxHintMillis is the last millisecond JSON can encode as a time (year
// 9999); later start times skip the server's time index.
const maxHintMillis = 253402300799999

// The first records stored at or after a seek time, by the server's clock,
// are fetched in one batch: the appender stamps a record before the server
// stores it, so under load the answer is usually a few records past the
// server's first.
const (
	seekWindow      = 16
	seekWindowBytes = 16 << 10
)

// timeWindow returns up to seekWindow consecutive records starting with
// the first one the server stored at or after t.
func (p *partition) timeWindow(t int64) ([]rawRecord, error) {
	at := time.UnixMilli(t).UTC()
	var out []rawRecord
	var decErr error
	_, err := p.l.directGet(p.direct, directReq{StartTime: &at, Batch: seekWindow, MaxBytes: seekWindowBytes}, func(m *nats.Msg) bool {
		rec, err := decodeDirect(m)
		if err != nil {
			decErr = err
			return false
		}
		if len(out) > 0 && rec.jsSeq != out[len(out)-1].jsSeq+1 {
			return false // keep the window consecutive
		}
		out = append(out, rec)
		return len(out) < seekWindow
	})
	if err != nil {
		return nil, err
	}
	return out, decErr
}

// SeekTime returns the first retained sequence number whose enqueued time
// is >= t. The server's time index gives a first guess, which a galloping
// and then binary search over the stored enqueued times checks and
// corrects.
func (l *Log) SeekTime(partition int, t int64) (int64, error) {
	p, err := l.part(partition)
	if err != nil {
		return 0, err
	}
	st, err := p.state(context.Background())
	if err != nil {
		return 0, err
	}
	lo, hi := st.bounds()
	if lo >= hi {
		return hi, nil
	}
	// atOrAfter reports whether record seq was enqueued at or after t. A
	// record gone meanwhile was expired by retention, so it was older
	// than every retained one.
	atOrAfter := func(seq int64) (bool, error) {
		rec, ok, err := p.getOne(uint64(seq)+1, st.LastSeq)
		if err != nil || !ok {
			return false, err
		}
		return rec.enqueued >= t, nil
	}
	// Invariant: the answer is in [lo, hi]. Galloping starts at guess:
	// backwards when hi == guess, else forwards from lo == guess+1.
	guess := hi
	switch {
	case t <= 0:
		return lo, nil // every enqueued time is >= 0
	case t <= maxHintMillis:
		window, err := p.timeWindow(t)
		if err != nil {
			return 0, fmt.Errorf("jetstream: partition %d: seek time %d: %w", partition, t, err)
		}
		if len(window) == 0 {
			break // nothing stored at or after t by the server's clock
		}
		i := slices.IndexFunc(window, func(r rawRecord) bool { return r.enqueued >= t })
		switch {
		case i > 0:
			// Consecutive records on both sides of t: the answer, or hi
			// if it was appended after the state was read.
			return min(int64(window[i].jsSeq)-1, hi), nil
		case i == 0:
			hi = min(hi, int64(window[0].jsSeq)-1)
			guess = hi
		default:
			guess = min(int64(window[len(window)-1].jsSeq)-1, hi)
			lo = max(lo, guess+1)
			if lo >= hi {
				return hi, nil
			}
		}
	}
	// Gallop away from the guess to bracket the answer.
	if hi == guess {
		for step := int64(1); lo < hi; step *= 2 {
			s := guess - step
			if s < lo {
				break
			}
			ok, err := atOrAfter(s)
			if err != nil {
				return 0, err
			}
			if !ok {
				lo = s + 1
				break
			}
			hi = s
		}
	} else {
		for step := int64(1); lo < hi; step *= 2 {
			s := guess + step
			if s >= hi {
				break
			}
			ok, err := atOrAfter(s)
			if err != nil {
				return 0, err
			}
			if ok {
				hi = s
				break
			}
			lo = s + 1
		}
	}
	for lo < hi {
		mid := lo + (hi-lo)/2
		ok, err := atOrAfter(mid)
		if err != nil {
			return 0, err
		}
		if ok {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, nil
}
