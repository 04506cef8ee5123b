package c2d

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// On-disk layout (Pebble). Every value starts with a format version byte so
// that a later layout can be read side by side with this one.
//
//	"g"                              → u64 highest sequence number handed out
//	'm' uvarint(len q) q  u64 seq    → message: header + body (immutable)
//	's' uvarint(len q) q  u64 seq    → delivery state: token, lockedUntil, count
//	'f' u64 seq                      → feedback record
//
// The message and its mutable state are separate keys so that a lock or an
// abandon rewrites 29 bytes, not the whole body. Sequence numbers come from
// one store-wide counter: they increase within every queue, and the counter
// never goes back even when a queue is emptied or deleted.
const (
	prefixGlobal   = 'g'
	prefixMessage  = 'm'
	prefixState    = 's'
	prefixFeedback = 'f'

	formatV1 = 1
)

var keyHighSeq = []byte{prefixGlobal}

var errCorrupt = errors.New("corrupt record")

func queueKey(prefix byte, queueID string, seq uint64) []byte {
	k := make([]byte, 0, 1+binary.MaxVarintLen64+len(queueID)+8)
	k = append(k, prefix)
	k = binary.AppendUvarint(k, uint64(len(queueID)))
	k = append(k, queueID...)
	return binary.BigEndian.AppendUint64(k, seq)
}

func parseQueueKey(k []byte) (queueID string, seq uint64, err error) {
	if len(k) < 1+1+8 {
		return "", 0, fmt.Errorf("queue key %q: %w", k, errCorrupt)
	}
	n, w := binary.Uvarint(k[1:])
	if w <= 0 || n > uint64(len(k)) || uint64(len(k)-1-w) != n+8 {
		return "", 0, fmt.Errorf("queue key %q: %w", k, errCorrupt)
	}
	id := k[1+w : 1+w+int(n)]
	return string(id), binary.BigEndian.Uint64(k[1+w+int(n):]), nil
}

func feedbackKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixFeedback}, seq)
}

func parseFeedbackKey(k []byte) (uint64, error) {
	if len(k) != 9 {
		return 0, fmt.Errorf("feedback key %q: %w", k, errCorrupt)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

// Times are stored as Unix nanoseconds; zero time is stored as 0.
func putTime(b []byte, t time.Time) []byte {
	var n int64
	if !t.IsZero() {
		n = t.UnixNano()
	}
	return binary.BigEndian.AppendUint64(b, uint64(n))
}

func getTime(n uint64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(n)).UTC()
}

func putString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// reader decodes a value; the first failure sticks so that callers check once.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) u8() byte {
	if len(r.b) < 1 {
		r.bad = true
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u32() uint32 {
	if len(r.b) < 4 {
		r.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64() uint64 {
	if len(r.b) < 8 {
		r.bad = true
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) str() string {
	n, w := binary.Uvarint(r.b)
	if w <= 0 || n > uint64(len(r.b)-w) {
		r.bad = true
		return ""
	}
	s := string(r.b[w : w+int(n)])
	r.b = r.b[w+int(n):]
	return s
}

func (r *reader) bytes(n int) []byte {
	if len(r.b) < n {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// msgHeader is the immutable part of a stored message.
type msgHeader struct {
	ack          AckMode
	enqueuedAt   time.Time
	expiresAt    time.Time
	deviceID     string
	generationID string
	messageID    string
}

func encodeMessage(h *msgHeader, body []byte) []byte {
	b := make([]byte, 0, 2+16+3*binary.MaxVarintLen16+len(h.deviceID)+len(h.generationID)+len(h.messageID)+len(body))
	b = append(b, formatV1, byte(h.ack))
	b = putTime(b, h.enqueuedAt)
	b = putTime(b, h.expiresAt)
	b = putString(b, h.deviceID)
	b = putString(b, h.generationID)
	b = putString(b, h.messageID)
	return append(b, body...)
}

// decodeMessage returns the header and the body, which aliases v.
func decodeMessage(v []byte) (msgHeader, []byte, error) {
	r := reader{b: v}
	var h msgHeader
	if r.u8() != formatV1 {
		return h, nil, fmt.Errorf("message value: unknown format: %w", errCorrupt)
	}
	h.ack = AckMode(r.u8())
	h.enqueuedAt = getTime(r.u64())
	h.expiresAt = getTime(r.u64())
	h.deviceID = r.str()
	h.generationID = r.str()
	h.messageID = r.str()
	if r.bad || !h.ack.valid() {
		return h, nil, fmt.Errorf("message value: %w", errCorrupt)
	}
	return h, r.b, nil
}

// msgState is the mutable delivery state of a stored message.
type msgState struct {
	token         LockToken
	lockedUntil   time.Time
	deliveryCount uint32
}

func encodeState(s *msgState) []byte {
	b := make([]byte, 0, 1+16+8+4)
	b = append(b, formatV1)
	b = append(b, s.token[:]...)
	b = putTime(b, s.lockedUntil)
	return binary.BigEndian.AppendUint32(b, s.deliveryCount)
}

func decodeState(v []byte) (msgState, error) {
	r := reader{b: v}
	var s msgState
	if r.u8() != formatV1 {
		return s, fmt.Errorf("state value: unknown format: %w", errCorrupt)
	}
	copy(s.token[:], r.bytes(16))
	s.lockedUntil = getTime(r.u64())
	s.deliveryCount = r.u32()
	if r.bad || len(r.b) != 0 {
		return s, fmt.Errorf("state value: %w", errCorrupt)
	}
	return s, nil
}

// storedFeedback is a feedback record plus what the store needs to manage it.
type storedFeedback struct {
	rec       FeedbackRecord
	queueID   string
	expiresAt time.Time
}

func encodeFeedback(f *storedFeedback) []byte {
	b := make([]byte, 0, 2+16+4*binary.MaxVarintLen16+len(f.queueID)+len(f.rec.DeviceID)+len(f.rec.DeviceGenerationID)+len(f.rec.OriginalMessageID))
	b = append(b, formatV1, byte(f.rec.Status))
	b = putTime(b, f.rec.EnqueuedTime)
	b = putTime(b, f.expiresAt)
	b = putString(b, f.queueID)
	b = putString(b, f.rec.DeviceID)
	b = putString(b, f.rec.DeviceGenerationID)
	return putString(b, f.rec.OriginalMessageID)
}

func decodeFeedback(v []byte) (storedFeedback, error) {
	r := reader{b: v}
	var f storedFeedback
	if r.u8() != formatV1 {
		return f, fmt.Errorf("feedback value: unknown format: %w", errCorrupt)
	}
	f.rec.Status = FeedbackStatus(r.u8())
	f.rec.EnqueuedTime = getTime(r.u64())
	f.expiresAt = getTime(r.u64())
	f.queueID = r.str()
	f.rec.DeviceID = r.str()
	f.rec.DeviceGenerationID = r.str()
	f.rec.OriginalMessageID = r.str()
	if r.bad || len(r.b) != 0 || !f.rec.Status.valid() {
		return f, fmt.Errorf("feedback value: %w", errCorrupt)
	}
	return f, nil
}
