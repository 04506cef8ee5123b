package soak

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// msgState is what the soak knows of a D2C message it sent.
type msgState uint8

const (
	// stUnsent: a slot for a message number not sent (yet).
	stUnsent msgState = iota
	// stSent: sent, outcome unknown (in flight when the hub died, or the
	// connection broke before the outcome arrived). Storing it is allowed.
	stSent
	// stAcked: the hub accepted it: it must be stored exactly once.
	stAcked
	// stRejected: the hub rejected it: it must not be stored.
	stRejected
)

// ledger records every D2C message sent and its outcome. Message ids are
// "<device>#<n>" with n counting from 0 per device across the whole soak,
// so a message is never sent twice and the state fits in one byte per
// message (a long soak sends tens of millions).
type ledger struct {
	mu                    sync.Mutex
	devs                  map[string][]msgState // device -> state by n
	other                 map[string]msgState   // ids of another shape (tests)
	sent, acked, rejected int64
}

func newLedger() *ledger {
	return &ledger{devs: map[string][]msgState{}, other: map[string]msgState{}}
}

func msgID(dev string, n int64) string { return dev + "#" + strconv.FormatInt(n, 10) }

// parseID splits a message id; ok is false for ids the soak never makes.
func parseID(id string) (dev string, n int64, ok bool) {
	i := strings.LastIndexByte(id, '#')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseInt(id[i+1:], 10, 64)
	return id[:i], n, err == nil && n >= 0
}

// slot returns where the state of a soak-shaped id lives (grow extends
// the device's slice); nil if it has no slot. Caller holds l.mu.
func (l *ledger) slot(dev string, n int64, grow bool) *msgState {
	states := l.devs[dev]
	if n >= int64(len(states)) {
		if !grow {
			return nil
		}
		states = append(states, make([]msgState, n+1-int64(len(states)))...)
		l.devs[dev] = states
	}
	return &states[n]
}

func (l *ledger) markSent(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent++
	if dev, n, ok := parseID(id); ok {
		*l.slot(dev, n, true) = stSent
		return
	}
	l.other[id] = stSent
}

// mark records id's outcome; only the first outcome counts.
func (l *ledger) mark(id string, to msgState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, _ := l.state(id); st != stSent {
		return
	}
	if dev, n, ok := parseID(id); ok {
		*l.slot(dev, n, false) = to
	} else {
		l.other[id] = to
	}
	switch to {
	case stAcked:
		l.acked++
	case stRejected:
		l.rejected++
	}
}

// state returns id's state (stUnsent if never sent). Caller holds l.mu.
func (l *ledger) state(id string) (msgState, bool) {
	if dev, n, ok := parseID(id); ok {
		if st := l.slot(dev, n, false); st != nil && *st != stUnsent {
			return *st, true
		}
		return stUnsent, false
	}
	st, ok := l.other[id]
	return st, ok
}

func (l *ledger) counts() (sent, acked, rejected int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent, l.acked, l.rejected
}

// storedRecord is one record of the telemetry log as the soak reads it.
type storedRecord struct {
	Seq int64
	ID  string // message-id
}

// D2CReport holds the device-to-cloud figures.
type D2CReport struct {
	Sent     int64 // messages sent
	Acked    int64 // accepted by the hub
	Rejected int64 // rejected by the hub
	Unknown  int64 // outcome never seen (in flight at a kill)
	Stored   int64 // records in the log
	// StoredUnacked are stored messages whose outcome the soak never saw:
	// durable but unacknowledged at the kill, which is allowed.
	StoredUnacked int64
	Lost          int64 // acknowledged but not stored
	Duplicated    int64 // stored more than once
	Phantom       int64 // stored but never sent, or rejected yet stored
	SeqGaps       int64 // partitions' sequence numbers not continuous from 0
	OutOfOrder    int64 // a device's messages stored out of sending order
	// EventHubRead is how many records the Event-Hub-compatible endpoint
	// delivered; EventHubMismatch counts partitions where they differ from
	// the log's.
	EventHubRead     int64
	EventHubMismatch int64
}

// problems collects the first descriptions of failures. It is safe for
// concurrent use.
type problems struct {
	mu    sync.Mutex
	list  []string
	total int
}

func (p *problems) addf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total++
	if len(p.list) < 20 {
		p.list = append(p.list, fmt.Sprintf(format, args...))
	}
}

// d2cCheck verifies the log's records as they stream by, in partition
// order, holding one byte per message sent (how often it was stored).
type d2cCheck struct {
	l       *ledger
	p       *problems
	r       D2CReport
	stored  map[string][]uint8 // device -> times stored by n (saturating)
	other   map[string]int     // stored ids of another shape
	last    map[string]int64   // device -> highest n stored so far
	part    int
	nextSeq int64
}

func newD2CCheck(l *ledger, p *problems) *d2cCheck {
	return &d2cCheck{l: l, p: p, stored: map[string][]uint8{}, other: map[string]int{}, last: map[string]int64{}, part: -1}
}

// add takes the next record of partition part.
func (c *d2cCheck) add(part int, seq int64, id string) {
	if part != c.part {
		c.part, c.nextSeq = part, 0
	}
	c.r.Stored++
	if seq != c.nextSeq {
		c.r.SeqGaps++
		c.p.addf("partition %d: sequence number %d where %d was due", part, seq, c.nextSeq)
	}
	c.nextSeq = seq + 1
	dev, n, ok := parseID(id)
	if !ok {
		c.other[id]++
		return
	}
	counts := c.stored[dev]
	if n >= int64(len(counts)) {
		counts = append(counts, make([]uint8, n+1-int64(len(counts)))...)
		c.stored[dev] = counts
	}
	if counts[n] < 255 {
		counts[n]++
	}
	if last, seen := c.last[dev]; seen && n <= last && counts[n] == 1 {
		c.r.OutOfOrder++
		c.p.addf("partition %d seq %d: %s stored after %s", part, seq, id, msgID(dev, last))
	}
	if last, seen := c.last[dev]; !seen || n > last {
		c.last[dev] = n
	}
}

// finish compares what was stored with the ledger.
func (c *d2cCheck) finish() D2CReport {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	r := c.r
	r.Sent, r.Acked, r.Rejected = l.sent, l.acked, l.rejected
	r.Unknown = r.Sent - r.Acked - r.Rejected
	judge := func(id string, times int, st msgState, known bool) {
		switch {
		case times > 0 && !known:
			r.Phantom++
			c.p.addf("stored message %q was never sent", id)
		case times > 0 && st == stRejected:
			r.Phantom++
			c.p.addf("message %s was rejected yet stored", id)
		case times > 0 && st == stSent:
			r.StoredUnacked++
		case times == 0 && known && st == stAcked:
			r.Lost++
			c.p.addf("acknowledged message %s is not in the log", id)
		}
		if times > 1 {
			r.Duplicated++
			c.p.addf("message %s stored %d times", id, times)
		}
	}
	devs := make([]string, 0, len(l.devs)+len(c.stored))
	seen := map[string]bool{}
	for d := range l.devs {
		devs, seen[d] = append(devs, d), true
	}
	for d := range c.stored {
		if !seen[d] {
			devs = append(devs, d)
		}
	}
	sort.Strings(devs)
	for _, d := range devs {
		states, counts := l.devs[d], c.stored[d]
		for n := 0; n < max(len(states), len(counts)); n++ {
			var st msgState = stUnsent
			if n < len(states) {
				st = states[n]
			}
			times := 0
			if n < len(counts) {
				times = int(counts[n])
			}
			if st == stUnsent && times == 0 {
				continue
			}
			judge(msgID(d, int64(n)), times, st, st != stUnsent)
		}
	}
	for id, st := range l.other {
		judge(id, c.other[id], st, true)
	}
	for id, times := range c.other {
		if _, known := l.other[id]; !known {
			judge(id, times, 0, false)
		}
	}
	return r
}

// verifyD2C checks the log's partitions against the ledger.
func verifyD2C(l *ledger, parts [][]storedRecord, p *problems) D2CReport {
	c := newD2CCheck(l, p)
	for pi, recs := range parts {
		for _, rec := range recs {
			c.add(pi, rec.Seq, rec.ID)
		}
	}
	return c.finish()
}

// partDigest sums up a partition's records (count and a hash of each
// sequence number and message-id, in order), so the Event-Hub-compatible
// endpoint's view can be compared with the log's without keeping either.
type partDigest struct {
	N   int64
	Sum uint64
}

func (d *partDigest) add(seq int64, id string) {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(seq))
	h.Write(b[:])
	h.Write([]byte(id))
	d.N++
	d.Sum = d.Sum*1099511628211 ^ h.Sum64() // order-sensitive
}

func digests(parts [][]storedRecord) []partDigest {
	out := make([]partDigest, len(parts))
	for i, recs := range parts {
		for _, r := range recs {
			out[i].add(r.Seq, r.ID)
		}
	}
	return out
}

// compareDigests checks that the Event-Hub-compatible endpoint delivered
// exactly the log's records, in order, with the log's sequence numbers.
func compareDigests(log, eh []partDigest, p *problems) (read, mismatch int64) {
	for pi := range log {
		var got partDigest
		if pi < len(eh) {
			got = eh[pi]
		}
		read += got.N
		if got != log[pi] {
			mismatch++
			p.addf("partition %d: the Event-Hub-compatible endpoint delivered %d records, the log holds %d, contents differ: %v", pi, got.N, log[pi].N, got.Sum != log[pi].Sum)
		}
	}
	return read, mismatch
}

// compareEventHub is compareDigests on record lists.
func compareEventHub(log, eh [][]storedRecord, p *problems) (read, mismatch int64) {
	return compareDigests(digests(log), digests(eh), p)
}

// twinLedger records twin updates: for each device, the highest value
// whose PATCH was acknowledged, and the highest ever attempted.
type twinLedger struct {
	mu        sync.Mutex
	acked     map[string]int64
	attempted map[string]int64
	version   map[string]int64 // highest version seen in a verification
	updates   int64
	ackedN    int64
}

func newTwinLedger() *twinLedger {
	return &twinLedger{acked: map[string]int64{}, attempted: map[string]int64{}, version: map[string]int64{}}
}

// TwinReport holds the twin figures.
type TwinReport struct {
	Updates int64 // PATCHes sent
	Acked   int64 // PATCHes acknowledged
	Checks  int64 // twin reads compared after restarts
	Lost    int64 // an acknowledged update missing after a restart
	Bad     int64 // a value never written, or the version went back
}

// checkTwin compares one device's twin read after a restart.
func (tl *twinLedger) checkTwin(dev string, tw twin, r *TwinReport, p *problems) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	r.Checks++
	acked, attempted := tl.acked[dev], tl.attempted[dev]
	for _, v := range []struct {
		name string
		n    int64
	}{{"tags.soak.n", tw.Tags.Soak.N}, {"properties.desired.soakN", tw.Properties.Desired.SoakN}} {
		switch {
		case v.n < acked:
			r.Lost++
			p.addf("twin %s: %s is %d after a restart, but %d was acknowledged", dev, v.name, v.n, acked)
		case v.n > attempted:
			r.Bad++
			p.addf("twin %s: %s is %d, but only up to %d was written", dev, v.name, v.n, attempted)
		}
	}
	if tw.Version < tl.version[dev] {
		r.Bad++
		p.addf("twin %s: version went back from %d to %d", dev, tl.version[dev], tw.Version)
	}
	tl.version[dev] = max(tl.version[dev], tw.Version)
}
