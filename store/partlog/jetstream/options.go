package jetstream

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/store/partlog"
)

// Defaults for Options fields left at zero.
const (
	DefaultStreamPrefix     = "AMQPHUB_TELEMETRY_"
	DefaultSubjectPrefix    = "amqphub.telemetry"
	DefaultMaxInFlight      = 1024
	DefaultMaxInFlightBytes = 4 << 20
	DefaultAckTimeout       = 10 * time.Second
	DefaultRequestTimeout   = 5 * time.Second
	DefaultMaxReadBatch     = 1000
	DefaultMaxReadBytes     = 4 << 20
)

// Options configure a Log. The zero value of every field but Partitions
// selects a default.
type Options struct {
	// Partitions is the partition count, 1..partlog.MaxPartitions. It is
	// recorded in every stream's metadata when the streams are created;
	// opening existing streams with another count fails with
	// partlog.ErrPartitionCountMismatch. 0 opens existing streams with
	// their recorded count (and fails if there are none).
	Partitions int

	// StreamPrefix names the streams: partition p is stream
	// StreamPrefix+p (default "AMQPHUB_TELEMETRY_"). Two logs on one
	// NATS account need different prefixes.
	StreamPrefix string

	// SubjectPrefix names the subjects: partition p's stream captures
	// SubjectPrefix+"."+p (default "amqphub.telemetry"). Nothing else may
	// publish there: a message without the log's record prefix is read
	// whole with the stream's own timestamp, which may break the time
	// order.
	SubjectPrefix string

	// Replicas is the stream replication factor, 1..5 (default 1). Use 3
	// in a cluster so that a stored record survives the loss of a node.
	Replicas int

	// Storage is where the streams keep messages (default file storage).
	Storage jetstream.StorageType

	// Retention is how long records are kept, the streams' MaxAge
	// (default 1 day, range 1 to 7 days).
	Retention time.Duration

	// RetentionBytes, if positive, caps each partition's stream size
	// (MaxBytes); the oldest records are dropped beyond it.
	RetentionBytes int64

	// MaxPayload is the largest payload accepted (default: the server's
	// max_payload less the 9-byte record prefix). Larger payloads fail
	// with partlog.ErrPayloadTooLarge before anything is sent.
	MaxPayload int

	// MaxInFlight bounds, per partition, the appends sent but not yet
	// acknowledged by the stream (default 1024); AppendAsync blocks while
	// it is reached.
	MaxInFlight int

	// MaxInFlightBytes bounds, per partition, the payload bytes in flight
	// (default 4 MiB). One payload larger than the bound is still sent
	// when nothing else is in flight.
	MaxInFlightBytes int

	// AckTimeout is how long an append waits for the stream's
	// acknowledgement before it fails (default 10 s). A timed-out append
	// may still have been stored: see the package documentation.
	AckTimeout time.Duration

	// RequestTimeout bounds each request of Read, the seeks and Info
	// (default 5 s).
	RequestTimeout time.Duration

	// MaxReadBatch caps the records one Read asks the server for (default
	// 1000); Read returns at most this many.
	MaxReadBatch int

	// MaxReadBytes caps the payload bytes one Read asks for when its
	// maxBytes is 0 (default 4 MiB).
	MaxReadBytes int

	// Logger receives watcher and timeout events (default slog.Default()).
	Logger *slog.Logger

	// Now, if set, replaces time.Now as the source of enqueued times.
	Now func() time.Time

	// maxAge replaces Retention without its bounds, so that tests can
	// watch records expire.
	maxAge time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.Partitions < 0 || o.Partitions > partlog.MaxPartitions {
		return o, fmt.Errorf("jetstream: partitions %d out of range 1..%d", o.Partitions, partlog.MaxPartitions)
	}
	if o.StreamPrefix == "" {
		o.StreamPrefix = DefaultStreamPrefix
	}
	if err := checkStreamPrefix(o.StreamPrefix); err != nil {
		return o, err
	}
	if o.SubjectPrefix == "" {
		o.SubjectPrefix = DefaultSubjectPrefix
	}
	if err := checkSubjectPrefix(o.SubjectPrefix); err != nil {
		return o, err
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Replicas < 1 || o.Replicas > 5 {
		return o, fmt.Errorf("jetstream: replicas %d out of range 1..5", o.Replicas)
	}
	if o.Storage != jetstream.FileStorage && o.Storage != jetstream.MemoryStorage {
		return o, fmt.Errorf("jetstream: unknown storage type %d", o.Storage)
	}
	if o.Retention == 0 {
		o.Retention = partlog.DefaultRetention
	}
	if o.Retention < partlog.MinRetention || o.Retention > partlog.MaxRetention {
		return o, fmt.Errorf("jetstream: retention %v out of range %v..%v", o.Retention, partlog.MinRetention, partlog.MaxRetention)
	}
	if o.maxAge == 0 {
		o.maxAge = o.Retention
	}
	if o.RetentionBytes < 0 {
		return o, fmt.Errorf("jetstream: negative retention bytes %d", o.RetentionBytes)
	}
	if o.MaxPayload < 0 {
		return o, fmt.Errorf("jetstream: negative max payload %d", o.MaxPayload)
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.MaxInFlight < 1 || o.MaxInFlight > 1<<20 {
		return o, fmt.Errorf("jetstream: max in flight %d out of range 1..%d", o.MaxInFlight, 1<<20)
	}
	if o.MaxInFlightBytes == 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if o.MaxInFlightBytes < 1 {
		return o, fmt.Errorf("jetstream: max in-flight bytes %d is not positive", o.MaxInFlightBytes)
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.AckTimeout < 0 {
		return o, fmt.Errorf("jetstream: negative ack timeout %v", o.AckTimeout)
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.RequestTimeout < 0 {
		return o, fmt.Errorf("jetstream: negative request timeout %v", o.RequestTimeout)
	}
	if o.MaxReadBatch == 0 {
		o.MaxReadBatch = DefaultMaxReadBatch
	}
	if o.MaxReadBatch < 1 || o.MaxReadBatch > 100_000 {
		return o, fmt.Errorf("jetstream: max read batch %d out of range 1..100000", o.MaxReadBatch)
	}
	if o.MaxReadBytes == 0 {
		o.MaxReadBytes = DefaultMaxReadBytes
	}
	if o.MaxReadBytes < 1 {
		return o, fmt.Errorf("jetstream: max read bytes %d is not positive", o.MaxReadBytes)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// checkStreamPrefix rejects characters JetStream forbids in stream names
// (they become subject tokens and file names).
func checkStreamPrefix(p string) error {
	if len(p) > 200 {
		return fmt.Errorf("jetstream: stream prefix %q longer than 200 bytes", p)
	}
	if i := strings.IndexAny(p, ".*> \t\r\n/\\"); i >= 0 {
		return fmt.Errorf("jetstream: stream prefix %q contains %q", p, p[i])
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("jetstream: stream prefix %q contains a control character", p)
		}
	}
	return nil
}

// checkSubjectPrefix accepts dot-separated literal tokens.
func checkSubjectPrefix(p string) error {
	for tok := range strings.SplitSeq(p, ".") {
		if tok == "" {
			return fmt.Errorf("jetstream: subject prefix %q has an empty token", p)
		}
		if tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return fmt.Errorf("jetstream: subject prefix %q is not a literal subject", p)
		}
	}
	return nil
}
