package eventhub

import (
	"strconv"
	"time"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog"
)

// capRuntimeMetric is the desired capability of receivers that want the
// partition's end on every event (Node trackLastEnqueuedEventProperties).
const capRuntimeMetric encoding.Symbol = "com.microsoft:enable-receiver-runtime-metric"

// Delivery-annotation keys of the runtime metric.
const (
	daLastSeq       = "last_enqueued_sequence_number"
	daLastOffset    = "last_enqueued_offset"
	daLastTime      = "last_enqueued_time_utc"
	daRetrievalTime = "runtime_info_retrieval_time_utc"
)

// eventEncoder turns stored records into deliverable events. It keeps its
// scratch space between calls, so each reader owns one.
type eventEncoder struct {
	secs    []frames.Section
	scratch []byte
}

// encode appends to dst the event for rec: the stored message with
// x-opt-sequence-number (long), x-opt-offset (decimal string) and
// x-opt-enqueued-time (timestamp) in its message annotations (the stored
// record format and that splice belong to internal/telemetry), and, when
// info is non-nil, the runtime-metric delivery annotations after the
// header. A payload that is not a stored record (it never should be) is
// delivered as the body of a data section rather than dropped.
func (e *eventEncoder) encode(dst []byte, rec partlog.Record, info *partlog.Info, now time.Time) []byte {
	start := len(dst)
	out, err := telemetry.AppendEventHubAnnotations(dst, rec.Payload, rec.Entry)
	if err != nil || len(rec.Payload) == 0 {
		out = appendAnnotations(dst[:start], rec.Entry)
		out = encoding.AppendBinary(encoding.AppendDescriptor(out, frames.CodeData), rec.Payload)
	}
	if info == nil {
		return out
	}
	// The stored form has no delivery annotations: ours go right after
	// the header (if any), before the message annotations.
	e.scratch = append(e.scratch[:0], out[start:]...)
	out = out[:start]
	secs, err := frames.SplitSections(e.scratch, e.secs[:0])
	if err != nil {
		// Unreachable: the sections were just written.
		return append(out, e.scratch...)
	}
	e.secs = secs[:0]
	rest := e.scratch
	if len(secs) > 0 && secs[0].Code == frames.CodeHeader {
		out = append(out, secs[0].Raw...)
		rest = rest[len(secs[0].Raw):]
	}
	out = appendRuntimeMetric(out, info, now)
	return append(out, rest...)
}

// appendAnnotations appends a message-annotations section holding only
// the Event Hubs annotations.
func appendAnnotations(b []byte, e partlog.Entry) []byte {
	b = encoding.AppendDescriptor(b, frames.CodeMessageAnn)
	b, mark := encoding.BeginMap(b)
	b = encoding.AppendSymbol(b, telemetry.AnnSequenceNumber)
	b = encoding.AppendLong(b, e.Seq)
	b = encoding.AppendSymbol(b, telemetry.AnnOffset)
	b = encoding.AppendString(b, strconv.FormatInt(e.Offset, 10))
	b = encoding.AppendSymbol(b, telemetry.AnnEHEnqueuedTime)
	b = encoding.AppendTimestamp(b, time.UnixMilli(e.EnqueuedTime))
	return encoding.EndMap(b, mark, 6)
}

// appendRuntimeMetric appends the delivery-annotations section that tells
// a runtime-metric receiver where the partition's end is.
func appendRuntimeMetric(b []byte, info *partlog.Info, now time.Time) []byte {
	b = encoding.AppendDescriptor(b, frames.CodeDeliveryAnn)
	b, mark := encoding.BeginMap(b)
	b = encoding.AppendSymbol(b, daLastSeq)
	b = encoding.AppendLong(b, info.LastSeq)
	b = encoding.AppendSymbol(b, daLastOffset)
	b = encoding.AppendString(b, strconv.FormatInt(info.LastOffset, 10))
	b = encoding.AppendSymbol(b, daLastTime)
	b = encoding.AppendTimestamp(b, time.UnixMilli(info.LastEnqueuedTime))
	b = encoding.AppendSymbol(b, daRetrievalTime)
	b = encoding.AppendTimestamp(b, now)
	return encoding.EndMap(b, mark, 8)
}
