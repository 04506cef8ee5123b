// Package partlog defines the partitioned, append-only telemetry log behind
// the hub's device-to-cloud path and its Event-Hub-compatible endpoint.
//
// A Log holds a fixed number of partitions. Every partition is an independent
// sequence of records; each record gets, when it becomes durable,
//
//   - a sequence number: int64, 0 for the first record of the partition,
//     consecutive, never reused (not even after retention removed old records);
//   - an offset: the int64 byte position of the record in the partition's
//     logical stream, strictly increasing but not consecutive. Event Hubs
//     clients see it as decimal text (x-opt-offset);
//   - an enqueued time in milliseconds since the Unix epoch, non-decreasing
//     within a partition even if the wall clock steps back.
//
// The payload is opaque to the log (the hub stores an encoded AMQP message).
//
// Implementations live in sub-packages (seglog: embedded segment files) and
// must all pass the conformance suite in partlogtest.
package partlog

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// MaxPartitions is the largest partition count a Log accepts; it matches the
// Event Hubs Standard and IoT Hub limit.
const MaxPartitions = 32

// Retention bounds the hub exposes (IoT Hub's built-in endpoint allows 1 to 7
// days and defaults to 1 day).
const (
	DefaultRetention = 24 * time.Hour
	MinRetention     = 24 * time.Hour
	MaxRetention     = 7 * 24 * time.Hour
)

// Errors shared by every implementation. Implementations wrap them with
// context, so test them with errors.Is.
var (
	// ErrClosed is returned by every operation on a closed Log, and by
	// Append/Wait calls that were blocked when Close ran.
	ErrClosed = errors.New("partlog: log closed")
	// ErrInvalidPartition means the partition index is outside [0, Partitions()).
	ErrInvalidPartition = errors.New("partlog: invalid partition")
	// ErrPayloadTooLarge means the payload exceeds the implementation's limit.
	ErrPayloadTooLarge = errors.New("partlog: payload too large")
	// ErrCorrupt means stored data failed validation (checksum, framing or
	// sequence). See CorruptError for the location.
	ErrCorrupt = errors.New("partlog: corrupt data")
	// ErrPartitionCountMismatch means a Log was reopened with a partition
	// count different from the one it was created with.
	ErrPartitionCountMismatch = errors.New("partlog: partition count mismatch")
)

// CorruptError reports where stored data failed validation. It matches
// ErrCorrupt with errors.Is.
type CorruptError struct {
	Path   string // file that failed validation
	Pos    int64  // byte position in that file
	Reason string // what did not validate
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("partlog: corrupt data in %s at byte %d: %s", e.Path, e.Pos, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true for a *CorruptError.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// Entry is the position of a durable record in its partition.
type Entry struct {
	Seq          int64 // sequence number, 0-based, consecutive
	Offset       int64 // byte position in the partition's logical stream
	EnqueuedTime int64 // milliseconds since the Unix epoch (UTC)
}

// Enqueued returns EnqueuedTime as a time.Time in UTC.
func (e Entry) Enqueued() time.Time { return time.UnixMilli(e.EnqueuedTime).UTC() }

// Record is a durable record as returned by Read.
type Record struct {
	Entry
	// Payload belongs to the caller once Read returns; the log never writes
	// to it again. Records of one Read call may share one backing array.
	Payload []byte
}

// Info describes a partition the way the Event Hubs $management partition
// properties need it.
//
// A partition that never held a record reports BeginSeq 0, LastSeq -1,
// LastOffset -1, LastEnqueuedTime 0 and Empty. A partition whose records all
// expired reports Empty, BeginSeq = LastSeq+1, and keeps the last record's
// LastSeq, LastOffset and LastEnqueuedTime.
type Info struct {
	BeginSeq         int64 // first retained sequence number (LastSeq+1 when empty)
	LastSeq          int64 // last sequence number ever assigned, -1 if none
	LastOffset       int64 // offset of the LastSeq record, -1 if none
	LastEnqueuedTime int64 // enqueued time of the LastSeq record in Unix ms, 0 if none
	Empty            bool  // no record is retained
}

// Log is a partitioned append-only log. All methods are safe for concurrent
// use. Only durable records (those whose append was acknowledged, or is
// about to be) are ever visible to Read, the seeks, Info and Wait.
type Log interface {
	// Partitions returns the fixed number of partitions.
	Partitions() int

	// AppendAsync queues payload for partition and returns without waiting
	// for the disk. The log copies payload before returning, so the caller
	// may reuse its buffer at once. done (which may be nil) is called
	// exactly once, from a goroutine owned by the log, after the record is
	// durable (err == nil) or once it is certain that it will not be
	// acknowledged (err != nil). done must return quickly and must not call
	// Append or AppendAsync on the same Log.
	//
	// Records queued by calls that happen one after the other (for
	// example from one goroutine) get increasing sequence numbers in call
	// order, so one device's messages keep their order in its partition.
	//
	// When the partition's queue is full, AppendAsync blocks until the
	// committer makes room, which bounds memory. If AppendAsync returns an
	// error, the record was not queued and done will not be called.
	AppendAsync(partition int, payload []byte, done func(Entry, error)) error

	// Append queues payload and waits until it is durable. If ctx is
	// already done, Append returns ctx's error without queueing anything.
	// If ctx ends while Append waits, it returns ctx's error; the record
	// may still become durable later.
	Append(ctx context.Context, partition int, payload []byte) (Entry, error)

	// Read appends to dst the durable records of partition whose sequence
	// number is >= fromSeq, in order, and returns the extended slice. A
	// fromSeq below the first retained record reads from the first retained
	// one; a fromSeq at or past the end returns no records. It returns at
	// most maxRecords records and stops before the payload total exceeds
	// maxBytes (no byte limit if maxBytes <= 0), but always returns at
	// least one record when one is available and maxRecords > 0, so a
	// reader can make progress. It may return fewer records than are
	// available (for example at a segment boundary); callers loop.
	Read(partition int, fromSeq int64, maxRecords, maxBytes int, dst []Record) ([]Record, error)

	// SeekOffset returns the sequence number of the first retained record
	// whose offset is >= offset (use offset+1 for ">"). It returns
	// LastSeq+1 when there is none.
	SeekOffset(partition int, offset int64) (int64, error)

	// SeekTime returns the sequence number of the first retained record
	// whose enqueued time (Unix ms) is >= t (use t+1 for ">"). It returns
	// LastSeq+1 when there is none.
	SeekTime(partition int, t int64) (int64, error)

	// Info returns the partition's bounds.
	Info(partition int) (Info, error)

	// Wait blocks until partition holds a durable record with sequence
	// number > afterSeq, ctx ends (returns ctx's error) or the Log is
	// closed (returns ErrClosed). It returns nil at once if such a record
	// already exists. Readers at the tail use it instead of polling.
	Wait(ctx context.Context, partition int, afterSeq int64) error

	// Close commits what is queued, calls every pending done, wakes all
	// waiters with ErrClosed and releases resources. Later calls return nil.
	Close() error
}
