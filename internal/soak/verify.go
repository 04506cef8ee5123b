package soak

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// msgState is what the soak knows of a D2C message it sent.
type msgState uint8

const (
	// stSent: sent, outcome unknown (in flight when the hub died, or the
	// connection broke before the outcome arrived). Storing it is allowed.
	stSent msgState = iota
	// stAcked: the hub accepted it: it must be stored exactly once.
	stAcked
	// stRejected: the hub rejected it: it must not be stored.
	stRejected
)

// ledger records every D2C message sent and its outcome. Message ids are
// "<device>#<n>" with n increasing per device across the whole soak, so a
// message is never sent twice.
type ledger struct {
	mu                    sync.Mutex
	msgs                  map[string]msgState
	sent, acked, rejected int64
}

func newLedger() *ledger { return &ledger{msgs: make(map[string]msgState)} }

func msgID(dev string, n int64) string { return dev + "#" + strconv.FormatInt(n, 10) }

// parseID splits a message id; ok is false for ids the soak never makes.
func parseID(id string) (dev string, n int64, ok bool) {
	i := strings.LastIndexByte(id, '#')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseInt(id[i+1:], 10, 64)
	return id[:i], n, err == nil
}

func (l *ledger) markSent(id string) {
	l.mu.Lock()
	l.msgs[id] = stSent
	l.sent++
	l.mu.Unlock()
}

func (l *ledger) mark(id string, st msgState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.msgs[id] != stSent {
		return
	}
	l.msgs[id] = st
	switch st {
	case stAcked:
		l.acked++
	case stRejected:
		l.rejected++
	}
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
	// delivered; EventHubMismatch counts differences from the log.
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

// verifyD2C checks the log's partitions against the ledger.
func verifyD2C(l *ledger, parts [][]storedRecord, p *problems) D2CReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := D2CReport{Sent: l.sent, Acked: l.acked, Rejected: l.rejected}
	r.Unknown = r.Sent - r.Acked - r.Rejected
	count := make(map[string]int, len(l.msgs))
	lastOf := map[string]int64{}
	for pi, recs := range parts {
		for i, rec := range recs {
			r.Stored++
			if rec.Seq != int64(i) {
				r.SeqGaps++
				p.addf("partition %d: record %d has sequence number %d", pi, i, rec.Seq)
			}
			count[rec.ID]++
			dev, n, ok := parseID(rec.ID)
			if !ok {
				continue // counted as a phantom below
			}
			if last, seen := lastOf[dev]; seen && n <= last && count[rec.ID] == 1 {
				r.OutOfOrder++
				p.addf("partition %d seq %d: %s stored after %s", pi, rec.Seq, rec.ID, msgID(dev, last))
			}
			lastOf[dev] = max(lastOf[dev], n)
		}
	}
	for id, c := range count {
		st, known := l.msgs[id]
		switch {
		case !known:
			r.Phantom++
			p.addf("stored message %q was never sent", id)
		case st == stRejected:
			r.Phantom++
			p.addf("message %s was rejected yet stored", id)
		case st == stSent:
			r.StoredUnacked++
		}
		if c > 1 {
			r.Duplicated++
			p.addf("message %s stored %d times", id, c)
		}
	}
	var lost []string
	for id, st := range l.msgs {
		if st == stAcked && count[id] == 0 {
			r.Lost++
			lost = append(lost, id)
		}
	}
	sort.Strings(lost)
	for _, id := range lost {
		p.addf("acknowledged message %s is not in the log", id)
	}
	return r
}

// compareEventHub checks that the Event-Hub-compatible endpoint delivered
// exactly the log's records, in order, with the log's sequence numbers.
func compareEventHub(log, eh [][]storedRecord, p *problems) (read, mismatch int64) {
	for pi := range log {
		var got []storedRecord
		if pi < len(eh) {
			got = eh[pi]
		}
		read += int64(len(got))
		if len(got) != len(log[pi]) {
			mismatch++
			p.addf("partition %d: the Event-Hub-compatible endpoint delivered %d records, the log holds %d", pi, len(got), len(log[pi]))
			continue
		}
		for i := range got {
			if got[i] != log[pi][i] {
				mismatch++
				p.addf("partition %d record %d: endpoint delivered %+v, the log holds %+v", pi, i, got[i], log[pi][i])
				break
			}
		}
	}
	return read, mismatch
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
