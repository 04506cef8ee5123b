package telemetry

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/store/partlog"
)

// Message annotation keys. The hub stamps the iothub-* keys on ingest; the
// Event-Hub-compatible reader adds the x-opt-* keys from the log entry when
// it sends a record. All are symbols on the wire.
const (
	AnnDeviceID         = "iothub-connection-device-id"          // string
	AnnModuleID         = "iothub-connection-module-id"          // string, modules only
	AnnAuthMethod       = "iothub-connection-auth-method"        // string (JSON)
	AnnAuthGenerationID = "iothub-connection-auth-generation-id" // string (digits)
	AnnEnqueuedTime     = "iothub-enqueuedtime"                  // timestamp
	AnnMessageSource    = "iothub-message-source"                // string, "Telemetry"

	AnnSequenceNumber      = "x-opt-sequence-number" // long
	AnnOffset              = "x-opt-offset"          // string of decimal digits
	AnnEHEnqueuedTime      = "x-opt-enqueued-time"   // timestamp
	messageSourceTelemetry = "Telemetry"
)

// ErrBadMessage is matched (errors.Is) by every error about a message that
// is not a well-formed AMQP message.
var ErrBadMessage = errors.New("telemetry: malformed message")

func badf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, args...))
}

// StampAnnotations returns the stored form of raw, an encoded AMQP message:
// delivery annotations dropped, ann merged into the message annotations,
// every other section copied byte for byte. Keys of ann (encoding.Symbol or
// string, both encoded as symbols) replace the same keys in raw; values are
// encoded with encoding.AppendAny, so use the Go types that give the AMQP
// type wanted (string, time.Time for a timestamp, int64 for a long). raw
// is validated completely (section order, every value well formed,
// property and header field types, string application-property keys); a
// malformed message gives an error matching ErrBadMessage.
func StampAnnotations(raw []byte, ann map[any]any) ([]byte, error) {
	keys := make([]string, 0, len(ann))
	vals := make(map[string]any, len(ann))
	for k, v := range ann {
		var s string
		switch k := k.(type) {
		case encoding.Symbol:
			s = string(k)
		case string:
			s = k
		default:
			return nil, fmt.Errorf("telemetry: annotation key of type %T; want a symbol", k)
		}
		if _, dup := vals[s]; dup {
			return nil, fmt.Errorf("telemetry: annotation key %q given twice", s)
		}
		keys = append(keys, s)
		vals[s] = v
	}
	slices.Sort(keys)
	var pairs []byte
	for _, k := range keys {
		pairs = encoding.AppendSymbol(pairs, encoding.Symbol(k))
		var err error
		if pairs, err = encoding.AppendAny(pairs, vals[k]); err != nil {
			return nil, fmt.Errorf("telemetry: annotation %q: %w", k, err)
		}
	}
	drop := func(key []byte) bool {
		_, ok := vals[string(key)]
		return ok
	}
	return appendStored(nil, raw, pairs, len(keys), drop, true)
}

// AppendEventHubAnnotations appends to dst the message an Event Hubs
// consumer receives for a stored record: the record with
// x-opt-sequence-number (long), x-opt-offset (decimal string) and
// x-opt-enqueued-time (timestamp) from e added to its message annotations,
// replacing any the record had. The record is trusted to be one that
// StampAnnotations (or ingest) produced, so only its section framing is
// checked; it does not allocate when dst has room.
func AppendEventHubAnnotations(dst, record []byte, e partlog.Entry) ([]byte, error) {
	var scratch [96]byte
	p := encoding.AppendSymbol(scratch[:0], AnnSequenceNumber)
	p = encoding.AppendLong(p, e.Seq)
	p = encoding.AppendSymbol(p, AnnOffset)
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], e.Offset, 10)
	p = append(append(p, encoding.TypeStr8, byte(len(d))), d...)
	p = encoding.AppendSymbol(p, AnnEHEnqueuedTime)
	p = appendTimestampMs(p, e.EnqueuedTime)
	return appendStored(dst, record, p, 3, isEventHubKey, false)
}

func isEventHubKey(k []byte) bool {
	return string(k) == AnnSequenceNumber || string(k) == AnnOffset || string(k) == AnnEHEnqueuedTime
}

// isHubKey reports the annotation keys a device may not set itself: the
// connection's identity and the hub's ingest stamps.
func isHubKey(k []byte) bool {
	return bytes.HasPrefix(k, []byte("iothub-connection-")) ||
		string(k) == AnnEnqueuedTime || string(k) == AnnMessageSource
}

func appendTimestampMs(b []byte, ms int64) []byte {
	return binary.BigEndian.AppendUint64(append(b, encoding.TypeTimestamp), uint64(ms))
}

// sectionRank orders message sections; the three body kinds share a rank.
func sectionRank(code uint64) int {
	switch code {
	case frames.CodeData, frames.CodeSequence, frames.CodeValue:
		return int(frames.CodeData - frames.CodeHeader)
	case frames.CodeFooter:
		return int(frames.CodeData-frames.CodeHeader) + 1
	}
	return int(code - frames.CodeHeader)
}

var sectionNames = map[uint64]string{
	frames.CodeHeader: "header", frames.CodeDeliveryAnn: "delivery-annotations",
	frames.CodeMessageAnn: "message-annotations", frames.CodeProperties: "properties",
	frames.CodeAppProperties: "application-properties", frames.CodeData: "data",
	frames.CodeSequence: "amqp-sequence", frames.CodeValue: "amqp-value", frames.CodeFooter: "footer",
}

// appendStored appends to dst the stored form of msg with npairs encoded
// annotation pairs (pairs) first in its message annotations, followed by
// msg's own annotations whose symbol or string key drop does not match.
// With deep, every section is validated completely.
func appendStored(dst, msg []byte, pairs []byte, npairs int, drop func([]byte) bool, deep bool) ([]byte, error) {
	var secBuf [12]frames.Section
	secs, err := frames.SplitSections(msg, secBuf[:0])
	if err != nil {
		return dst, fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	if deep && len(secs) == 0 {
		return dst, badf("the message is empty")
	}
	var header, ma []byte
	prevRank, body := -1, uint64(0)
	for _, s := range secs {
		rank := sectionRank(s.Code)
		if rank < prevRank {
			return dst, badf("%s section after a later section", sectionNames[s.Code])
		}
		if rank == prevRank && rank != sectionRank(frames.CodeData) {
			return dst, badf("two %s sections", sectionNames[s.Code])
		}
		prevRank = rank
		switch s.Code {
		case frames.CodeHeader:
			header = s.Raw
		case frames.CodeMessageAnn:
			ma = s.Raw
		case frames.CodeData, frames.CodeSequence, frames.CodeValue:
			if body != 0 && (body != s.Code || s.Code == frames.CodeValue) {
				return dst, badf("%s section after a %s section: a body is data sections, amqp-sequence sections or one amqp-value", sectionNames[s.Code], sectionNames[body])
			}
			body = s.Code
		}
		if deep {
			if err := checkSection(s); err != nil {
				return dst, err
			}
		}
	}

	start := len(dst)
	dst = append(dst, header...)
	dst = encoding.AppendDescriptor(dst, frames.CodeMessageAnn)
	dst, mark := encoding.BeginMap(dst)
	dst = append(dst, pairs...)
	count := 2 * npairs
	if ma != nil {
		var r encoding.Reader
		r.Reset(ma)
		if _, _, err := r.ReadDescriptor(); err != nil {
			return dst[:start], fmt.Errorf("%w: message-annotations: %w", ErrBadMessage, err)
		}
		if !r.SkipNull() {
			n, err := r.ReadMapHeader()
			if err != nil {
				return dst[:start], fmt.Errorf("%w: message-annotations: %w", ErrBadMessage, err)
			}
			for i := 0; i < n; i += 2 {
				k, err := r.RawValue()
				if err != nil {
					return dst[:start], fmt.Errorf("%w: message-annotations key: %w", ErrBadMessage, err)
				}
				v, err := r.RawValue()
				if err != nil {
					return dst[:start], fmt.Errorf("%w: message-annotations value: %w", ErrBadMessage, err)
				}
				if t := textOf(k); t != nil && drop(t) {
					continue
				}
				dst = append(append(dst, k...), v...)
				count += 2
			}
		}
	}
	dst = encoding.EndMap(dst, mark, count)
	for _, s := range secs {
		switch s.Code {
		case frames.CodeHeader, frames.CodeDeliveryAnn, frames.CodeMessageAnn:
		default:
			dst = append(dst, s.Raw...)
		}
	}
	return dst, nil
}

// textOf returns the text of an encoded string or symbol, nil otherwise.
func textOf(v []byte) []byte {
	switch v[0] {
	case encoding.TypeStr8, encoding.TypeSym8:
		return v[2:]
	case encoding.TypeStr32, encoding.TypeSym32:
		return v[5:]
	}
	return nil
}
