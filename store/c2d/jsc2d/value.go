package jsc2d

import (
	"slices"
	"time"

	"amqphub/store/c2d"
)

// qval is the value of a queue key: everything about one queue except the
// message bodies. It is rewritten whole by every change, with a CAS on the
// key's revision, so that a state change and the feedback it produces are
// one atomic write.
type qval struct {
	ID string `json:"id"`
	// Seq and FSeq are the last message and feedback sequence numbers. The
	// key is never deleted, so they never go back.
	Seq  uint64  `json:"s,omitempty"`
	FSeq uint64  `json:"fs,omitempty"`
	Msgs []hdr   `json:"m,omitempty"`
	Fb   []fbrec `json:"f,omitempty"`
	// Retired holds the most recent tokens whose lock was lost rather than
	// settled (newest last), so that every node answers ErrLockLost.
	Retired [][]byte `json:"r,omitempty"`
}

// hdr is one pending message. Times are Unix nanoseconds.
type hdr struct {
	Seq   uint64 `json:"s"`
	Body  uint64 `json:"b"`            // sequence of the body in the bodies stream; 0 when inline
	Data  []byte `json:"bd,omitempty"` // the body itself when small (see Options.InlineBodyBytes)
	MsgID string `json:"i,omitempty"`
	DevID string `json:"d,omitempty"`
	GenID string `json:"g,omitempty"`
	Ack   uint8  `json:"a,omitempty"`
	Enq   int64  `json:"e"`
	Exp   int64  `json:"x"`
	DC    uint32 `json:"c,omitempty"`
	Tok   []byte `json:"t,omitempty"`
	Until int64  `json:"u,omitempty"`
}

// fbrec is one pending feedback record of the queue.
type fbrec struct {
	FSeq uint64 `json:"s"`
	// Rev orders records across queues: the revision of the write that
	// added the record. A record is written with 0 (the revision is not
	// known before the write) and stamped by the next write of the key,
	// which knows it; readers use the entry's revision while it is 0.
	Rev   uint64 `json:"v,omitempty"`
	MsgID string `json:"i,omitempty"`
	DevID string `json:"d,omitempty"`
	GenID string `json:"g,omitempty"`
	St    uint8  `json:"st,omitempty"`
	At    int64  `json:"at"`
	Exp   int64  `json:"x"`
	N     int    `json:"n,omitempty"` // abandoned deliveries
	Tok   []byte `json:"t,omitempty"` // batch lock token
	Until int64  `json:"u,omitempty"`
	Node  string `json:"o,omitempty"` // node holding the batch
}

const retiredKeep = 32

// clone copies v deeply enough for a mutation: token slices are replaced,
// never written in place, so they are shared.
func (v *qval) clone() *qval {
	c := *v
	c.Msgs = slices.Clone(v.Msgs)
	c.Fb = slices.Clone(v.Fb)
	c.Retired = slices.Clone(v.Retired)
	return &c
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func tokenOf(b []byte) c2d.LockToken {
	var t c2d.LockToken
	copy(t[:], b)
	return t
}

func (h *hdr) expired(now int64) bool { return now >= h.Exp }
func (h *hdr) locked(now int64) bool  { return len(h.Tok) != 0 && now < h.Until }
func (h *hdr) available(now int64) bool {
	return !h.expired(now) && !h.locked(now)
}

func (f *fbrec) live(now int64) bool      { return now < f.Exp }
func (f *fbrec) available(now int64) bool { return f.live(now) && (len(f.Tok) == 0 || now >= f.Until) }

func (v *qval) hasAvailable(now int64) bool {
	for i := range v.Msgs {
		if v.Msgs[i].available(now) {
			return true
		}
	}
	return false
}

func (v *qval) hasAvailableFb(now int64) bool {
	for i := range v.Fb {
		if v.Fb[i].available(now) {
			return true
		}
	}
	return false
}

// empty reports whether the queue holds nothing but its counters.
func (v *qval) empty() bool { return len(v.Msgs) == 0 && len(v.Fb) == 0 && len(v.Retired) == 0 }

func (v *qval) retire(tok []byte) {
	if len(tok) == 0 {
		return
	}
	v.Retired = append(v.Retired, tok)
	if len(v.Retired) > retiredKeep {
		v.Retired = slices.Delete(v.Retired, 0, len(v.Retired)-retiredKeep)
	}
}

func (v *qval) isRetired(t c2d.LockToken) bool {
	for _, r := range v.Retired {
		if tokenOf(r) == t {
			return true
		}
	}
	return false
}

func (v *qval) findTok(t c2d.LockToken) int {
	if t.IsZero() {
		return -1
	}
	for i := range v.Msgs {
		if len(v.Msgs[i].Tok) != 0 && tokenOf(v.Msgs[i].Tok) == t {
			return i
		}
	}
	return -1
}

// change collects what one mutation did besides the value: bodies to
// delete after the write.
type change struct {
	bodies []uint64
}

// feedback appends h's outcome when its ack mode asks for it.
func (v *qval) feedback(cfg *c2d.Config, h *hdr, st c2d.FeedbackStatus, now int64) {
	if !c2d.AckMode(h.Ack).Wants(st) {
		return
	}
	v.FSeq++
	v.Fb = append(v.Fb, fbrec{
		FSeq: v.FSeq, MsgID: h.MsgID, DevID: h.DevID, GenID: h.GenID,
		St: uint8(st), At: now, Exp: now + int64(cfg.FeedbackTTL),
	})
}

// remove deletes message i; retire remembers its token as lost.
func (v *qval) remove(i int, retire bool, ch *change) {
	h := &v.Msgs[i]
	if retire {
		v.retire(h.Tok)
	}
	if h.Body != 0 {
		ch.bodies = append(ch.bodies, h.Body)
	}
	v.Msgs = slices.Delete(v.Msgs, i, i+1)
}

// deadLetter ends message i with st, producing its feedback.
func (v *qval) deadLetter(cfg *c2d.Config, i int, st c2d.FeedbackStatus, now int64, retire bool, ch *change) {
	v.feedback(cfg, &v.Msgs[i], st, now)
	v.remove(i, retire, ch)
}

// expire dead-letters expired messages and drops expired feedback, as
// every operation does before anything else. It reports whether it changed
// anything.
func (v *qval) expire(cfg *c2d.Config, now int64, ch *change) bool {
	changed := false
	for i := 0; i < len(v.Msgs); {
		if v.Msgs[i].expired(now) {
			v.deadLetter(cfg, i, c2d.StatusExpired, now, true, ch)
			changed = true
			continue
		}
		i++
	}
	n := len(v.Fb)
	v.Fb = slices.DeleteFunc(v.Fb, func(f fbrec) bool { return !f.live(now) })
	return changed || len(v.Fb) != n
}

// due reports whether expire would change anything at now.
func (v *qval) due(now int64) bool {
	for i := range v.Msgs {
		if v.Msgs[i].expired(now) {
			return true
		}
	}
	for i := range v.Fb {
		if !v.Fb[i].live(now) {
			return true
		}
	}
	return false
}

// stamp gives records written with revision 0 the revision rev of the
// value they were read from.
func (v *qval) stamp(rev uint64) {
	for i := range v.Fb {
		if v.Fb[i].Rev == 0 {
			v.Fb[i].Rev = rev
		}
	}
}

// nextLockExpiry returns the earliest lockedUntil among held locks, 0 when
// none is held.
func (v *qval) nextLockExpiry(now int64) int64 {
	var next int64
	for i := range v.Msgs {
		h := &v.Msgs[i]
		if h.locked(now) && (next == 0 || h.Until < next) {
			next = h.Until
		}
	}
	return next
}

// capFeedback drops the oldest feedback records while the encoded value
// would exceed limit. It reports how many it dropped.
func (v *qval) capFeedback(limit int) (int, []byte, error) {
	dropped := 0
	for {
		b, err := encodeQ(v)
		if err != nil {
			return dropped, nil, err
		}
		if len(b) <= limit || len(v.Fb) == 0 {
			return dropped, b, nil
		}
		n := max(1, len(v.Fb)/8)
		v.Fb = slices.Delete(v.Fb, 0, n)
		dropped += n
	}
}
