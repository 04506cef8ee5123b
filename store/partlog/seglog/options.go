package seglog

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"amqphub/store/partlog"
)

// Defaults for Options fields left at zero.
const (
	DefaultSegmentSize       = 64 << 20
	DefaultMaxQueueBytes     = 4 << 20
	DefaultMaxPayload        = 4 << 20
	DefaultIndexInterval     = 16 << 10
	DefaultRetentionInterval = time.Minute
)

// Bounds checked by Open.
const (
	MinSegmentSize = 4 << 10
	// MaxSegmentSize keeps every file position within 32 bits (the index
	// stores positions as uint32) even when a segment overshoots by a batch.
	MaxSegmentSize   = 1 << 30
	MinMaxQueueBytes = 4 << 10
	MaxMaxQueueBytes = 256 << 20
)

// ErrLocked means another Log (in this or another process) has the
// directory open.
var ErrLocked = errors.New("seglog: directory locked")

// Options configure a Log. The zero value of every field but Partitions
// selects a default.
type Options struct {
	// Partitions is the partition count, 1..partlog.MaxPartitions. It is
	// stored when the log is created; reopening with another count fails
	// with partlog.ErrPartitionCountMismatch. 0 reopens with the stored
	// count (and fails for a new log).
	Partitions int

	// SegmentSize is the size at which a partition starts a new segment
	// file (default 64 MiB). A batch is never split across segments, so a
	// segment can exceed it by at most one batch.
	SegmentSize int64

	// BatchWindow is how long a partition's committer waits after the
	// first queued record before writing and syncing the batch, so that
	// more records share one fsync. 0 (the default) is adaptive: the
	// committer writes as soon as it is idle, so records queued during one
	// fsync form the next batch; under load batches grow by themselves and
	// an isolated append pays one fsync and no delay.
	BatchWindow time.Duration

	// MaxQueueBytes bounds, per partition, the bytes queued but not yet
	// taken by the committer (payloads plus 24 bytes per record; default
	// 4 MiB). AppendAsync blocks while it is exceeded. One record larger
	// than the bound is still admitted into an empty queue. A partition
	// holds at most two such buffers (one filling, one being written).
	// With a BatchWindow, a batch is also committed early once half of it
	// is queued.
	MaxQueueBytes int

	// MaxPayload is the largest payload accepted (default 4 MiB, at most
	// 64 MiB).
	MaxPayload int

	// Retention is how long records are kept (default 1 day, range 1 to 7
	// days). Whole segments are deleted once their newest record is older.
	Retention time.Duration

	// RetentionBytes, if positive, caps each partition's size on disk:
	// the oldest segments are deleted while the partition is larger. The
	// segment being written is never deleted, and the cap is checked when
	// a segment is rolled and every RetentionInterval, so a partition can
	// exceed it by up to one segment.
	RetentionBytes int64

	// RetentionInterval is how often retention is enforced (default 1
	// minute); it is also enforced whenever a segment is rolled.
	RetentionInterval time.Duration

	// IndexInterval is the spacing, in bytes, of the sparse index that
	// seeks use (default 16 KiB): a seek reads at most about this much.
	IndexInterval int

	// Logger receives recovery and retention events (default slog.Default()).
	Logger *slog.Logger

	// Now, if set, replaces time.Now as the source of enqueued times and
	// retention decisions (for tests and simulations).
	Now func() time.Time

	// openFile replaces the segment file opener in tests.
	openFile openFunc
}

func (o Options) withDefaults() (Options, error) {
	if o.Partitions < 0 || o.Partitions > partlog.MaxPartitions {
		return o, fmt.Errorf("seglog: partitions %d out of range 1..%d", o.Partitions, partlog.MaxPartitions)
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.SegmentSize < MinSegmentSize || o.SegmentSize > MaxSegmentSize {
		return o, fmt.Errorf("seglog: segment size %d out of range %d..%d", o.SegmentSize, MinSegmentSize, MaxSegmentSize)
	}
	if o.BatchWindow < 0 || o.BatchWindow > time.Second {
		return o, fmt.Errorf("seglog: batch window %v out of range 0..1s", o.BatchWindow)
	}
	if o.MaxQueueBytes == 0 {
		o.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if o.MaxQueueBytes < MinMaxQueueBytes || o.MaxQueueBytes > MaxMaxQueueBytes {
		return o, fmt.Errorf("seglog: max queue bytes %d out of range %d..%d", o.MaxQueueBytes, MinMaxQueueBytes, MaxMaxQueueBytes)
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.MaxPayload < 0 || o.MaxPayload > maxRecordPayload {
		return o, fmt.Errorf("seglog: max payload %d out of range 0..%d", o.MaxPayload, maxRecordPayload)
	}
	if o.Retention == 0 {
		o.Retention = partlog.DefaultRetention
	}
	if o.Retention < partlog.MinRetention || o.Retention > partlog.MaxRetention {
		return o, fmt.Errorf("seglog: retention %v out of range %v..%v", o.Retention, partlog.MinRetention, partlog.MaxRetention)
	}
	if o.RetentionBytes < 0 {
		return o, fmt.Errorf("seglog: negative retention bytes %d", o.RetentionBytes)
	}
	if o.RetentionInterval == 0 {
		o.RetentionInterval = DefaultRetentionInterval
	}
	if o.RetentionInterval < 0 {
		return o, fmt.Errorf("seglog: negative retention interval %v", o.RetentionInterval)
	}
	if o.IndexInterval == 0 {
		o.IndexInterval = DefaultIndexInterval
	}
	if o.IndexInterval < 64 || o.IndexInterval > 1<<24 {
		return o, fmt.Errorf("seglog: index interval %d out of range 64..%d", o.IndexInterval, 1<<24)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.openFile == nil {
		o.openFile = openOSFile
	}
	return o, nil
}
