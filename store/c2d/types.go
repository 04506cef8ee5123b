package c2d

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Errors returned by every Store. Callers test them with errors.Is; the
// returned errors wrap them with the operation and queue.
var (
	// ErrQueueFull means the queue already holds MaxDepth pending (enqueued
	// plus locked) messages. IoT Hub answers amqp:resource-limit-exceeded.
	ErrQueueFull = errors.New("c2d: queue full")
	// ErrNotFound means the lock token (or message) is unknown to the queue.
	ErrNotFound = errors.New("c2d: not found")
	// ErrLockLost means the lock token was valid once but its lock expired or
	// was superseded. IoT Hub answers com.microsoft:message-lock-lost.
	ErrLockLost = errors.New("c2d: lock lost")
	// ErrInvalid means an argument was rejected before anything was changed.
	ErrInvalid = errors.New("c2d: invalid argument")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("c2d: store closed")
)

// Defaults are IoT Hub's documented values.
const (
	DefaultMaxDepth                 = 50
	DefaultMaxDeliveryCount         = 10
	DefaultLockDuration             = time.Minute
	DefaultTTL                      = time.Hour
	DefaultFeedbackLockDuration     = time.Minute
	DefaultFeedbackTTL              = time.Hour
	DefaultFeedbackMaxDeliveryCount = 10
	// DefaultMaxMessageBytes bounds a stored body. IoT Hub's C2D limit is
	// 64 KiB of payload; the encoded AMQP message carries properties on top,
	// so the store only guards against absurd sizes.
	DefaultMaxMessageBytes = 1 << 20
	// MaxIDBytes bounds queue ids and the string fields of a message.
	MaxIDBytes = 1024
)

// AckMode is the feedback a service asked for with the iothub-ack property.
type AckMode uint8

// Ack modes, in the order IoT Hub documents them.
const (
	AckNone AckMode = iota
	AckPositive
	AckNegative
	AckFull
)

var ackNames = [...]string{"none", "positive", "negative", "full"}

// String returns the iothub-ack word.
func (a AckMode) String() string {
	if int(a) < len(ackNames) {
		return ackNames[a]
	}
	return fmt.Sprintf("AckMode(%d)", uint8(a))
}

// ParseAckMode parses an iothub-ack value. The empty string is AckNone,
// matching a message without the property; matching is case-insensitive.
func ParseAckMode(s string) (AckMode, error) {
	if s == "" {
		return AckNone, nil
	}
	for i, n := range ackNames {
		if strings.EqualFold(s, n) {
			return AckMode(i), nil
		}
	}
	return AckNone, fmt.Errorf("iothub-ack %q: %w", s, ErrInvalid)
}

func (a AckMode) valid() bool { return a <= AckFull }

// Wants reports whether a final outcome with status st produces feedback.
func (a AckMode) Wants(st FeedbackStatus) bool {
	if st == StatusSuccess {
		return a == AckPositive || a == AckFull
	}
	return a == AckNegative || a == AckFull
}

// LockToken identifies one lock of one message (or one feedback batch).
// Its 16 bytes are sent as the AMQP delivery tag; the C# SDKs read the tag
// with new Guid(bytes), so String uses .NET's mixed-endian GUID layout.
type LockToken [16]byte

// IsZero reports whether t is the zero token, which is never issued.
func (t LockToken) IsZero() bool { return t == LockToken{} }

// guidOrder maps the GUID text position of each byte to its index in the
// token: .NET stores the first three GUID fields little-endian.
var guidOrder = [16]int{3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15}

// String formats t as the GUID the C# SDK derives from the delivery tag, for
// the x-opt-lock-token annotation.
func (t LockToken) String() string {
	var ordered [16]byte
	for i, j := range guidOrder {
		ordered[i] = t[j]
	}
	h := hex.EncodeToString(ordered[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// ParseLockToken is the inverse of LockToken.String. Braces and case are
// accepted, as .NET's Guid.Parse accepts them.
func ParseLockToken(s string) (LockToken, error) {
	var t LockToken
	c := strings.TrimSuffix(strings.TrimPrefix(s, "{"), "}")
	if len(c) != 36 || c[8] != '-' || c[13] != '-' || c[18] != '-' || c[23] != '-' {
		return t, fmt.Errorf("lock token %q: not a GUID: %w", s, ErrInvalid)
	}
	raw, err := hex.DecodeString(c[0:8] + c[9:13] + c[14:18] + c[19:23] + c[24:36])
	if err != nil {
		return t, fmt.Errorf("lock token %q: %w", s, ErrInvalid)
	}
	for i, j := range guidOrder {
		t[j] = raw[i]
	}
	return t, nil
}

// NewMessage is what the hub enqueues.
type NewMessage struct {
	// DeviceID goes into feedback records; empty means the queue id.
	DeviceID string
	// GenerationID is the device's generation id at enqueue time, for feedback.
	GenerationID string
	// MessageID is the service's message-id as a string (may be empty).
	MessageID string
	Ack       AckMode
	// ExpiresAt is the absolute expiry; zero means now + Config.DefaultTTL.
	// A time already past dead-letters the message at once (Expired).
	ExpiresAt time.Time
	// Body is the encoded AMQP message, stored as is. The store copies it.
	Body []byte
}

// Message is a locked message handed to a device.
type Message struct {
	QueueID      string
	Seq          uint64 // increasing within a queue; x-opt-sequence-number
	LockToken    LockToken
	LockedUntil  time.Time
	MessageID    string
	DeviceID     string
	GenerationID string
	Ack          AckMode
	EnqueuedAt   time.Time
	ExpiresAt    time.Time
	// DeliveryCount counts explicit abandons before this delivery; lock
	// expiries do not count (IoT Hub's rule).
	DeliveryCount uint32
	Body          []byte
}

// Counts are the pending messages of one queue. Messages whose expiry has
// passed are not counted even before they are swept.
type Counts struct {
	Enqueued int // available, or locked with an expired lock
	Locked   int // held by an unexpired lock
}

// Total is the queue depth the MaxDepth limit applies to.
func (c Counts) Total() int { return c.Enqueued + c.Locked }

// FeedbackStatus is a feedback record's statusCode.
type FeedbackStatus uint8

// Feedback statuses, numbered as the C# service SDK's enum.
const (
	StatusSuccess FeedbackStatus = iota
	StatusExpired
	StatusDeliveryCountExceeded
	StatusRejected
	StatusPurged
)

var statusNames = [...]string{"Success", "Expired", "DeliveryCountExceeded", "Rejected", "Purged"}

// String returns the word IoT Hub puts in statusCode and description.
func (s FeedbackStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("FeedbackStatus(%d)", uint8(s))
}

// ParseFeedbackStatus parses a statusCode word, case-insensitively (the C
// service SDK lowercases the description).
func ParseFeedbackStatus(s string) (FeedbackStatus, error) {
	for i, n := range statusNames {
		if strings.EqualFold(s, n) {
			return FeedbackStatus(i), nil
		}
	}
	return 0, fmt.Errorf("feedback status %q: %w", s, ErrInvalid)
}

func (s FeedbackStatus) valid() bool { return int(s) < len(statusNames) }

// FeedbackRecord is one delivery outcome reported to the service.
type FeedbackRecord struct {
	OriginalMessageID  string
	DeviceID           string
	DeviceGenerationID string
	Status             FeedbackStatus
	// EnqueuedTime is when the outcome happened (IoT Hub's enqueuedTimeUtc:
	// "when the outcome of the message happened"), not when the C2D message
	// was enqueued.
	EnqueuedTime time.Time
}

// FeedbackBatch is a locked set of feedback records for one delivery to the
// service. Settle it with CompleteFeedback or AbandonFeedback.
type FeedbackBatch struct {
	LockToken   LockToken
	LockedUntil time.Time
	Records     []FeedbackRecord
}

// Config holds the IoT Hub limits and the clock. The zero value of each
// field means its default.
type Config struct {
	MaxDepth                 int
	MaxDeliveryCount         int
	LockDuration             time.Duration
	DefaultTTL               time.Duration
	FeedbackLockDuration     time.Duration
	FeedbackTTL              time.Duration
	FeedbackMaxDeliveryCount int
	MaxMessageBytes          int
	// Now is the clock; nil means time.Now. Tests inject a manual clock.
	Now func() time.Time
	// ManualSweep turns off the store's own expiry timer: lock and TTL
	// expiries are then applied lazily by the operations that meet them and
	// by explicit Sweep calls. Tests with a manual clock set it.
	ManualSweep bool
	// Logger receives background errors; nil means slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxDepth, DefaultMaxDepth)
	def(&c.MaxDeliveryCount, DefaultMaxDeliveryCount)
	def(&c.FeedbackMaxDeliveryCount, DefaultFeedbackMaxDeliveryCount)
	def(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	defd(&c.LockDuration, DefaultLockDuration)
	defd(&c.DefaultTTL, DefaultTTL)
	defd(&c.FeedbackLockDuration, DefaultFeedbackLockDuration)
	defd(&c.FeedbackTTL, DefaultFeedbackTTL)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports a clear error for negative limits.
func (c Config) Validate() error {
	if c.MaxDepth < 0 || c.MaxDeliveryCount < 0 || c.FeedbackMaxDeliveryCount < 0 || c.MaxMessageBytes < 0 {
		return fmt.Errorf("c2d config: negative limit: %w", ErrInvalid)
	}
	if c.LockDuration < 0 || c.DefaultTTL < 0 || c.FeedbackLockDuration < 0 || c.FeedbackTTL < 0 {
		return fmt.Errorf("c2d config: negative duration: %w", ErrInvalid)
	}
	return nil
}

// Store is the C2D queue and feedback store. All methods are safe for
// concurrent use. The context is honoured until an operation is registered
// with the committer; once registered, it runs to completion.
type Store interface {
	// Enqueue appends a message to queueID and returns its sequence number
	// once it is durable. ErrQueueFull when MaxDepth messages are pending.
	Enqueue(ctx context.Context, queueID string, m NewMessage) (uint64, error)
	// Lock locks the oldest available message of queueID and returns it with
	// a fresh lock token. ok is false when none is available.
	Lock(ctx context.Context, queueID string) (m Message, ok bool, err error)
	// Watch returns a channel that receives a value whenever a message of
	// queueID may have become available (enqueued, abandoned, lock expired),
	// and a function that ends the watch. Signals coalesce (capacity 1), and
	// the channel is signalled at once if a message is available already, so
	// a loop of "wait, then Lock until !ok" loses no wake-up.
	Watch(queueID string) (<-chan struct{}, func())
	// Complete removes the locked message (feedback Success).
	Complete(ctx context.Context, queueID string, token LockToken) error
	// Abandon returns the locked message to the queue and counts the
	// delivery; at MaxDeliveryCount it is dead-lettered instead.
	Abandon(ctx context.Context, queueID string, token LockToken) error
	// Reject dead-letters the locked message (feedback Rejected).
	Reject(ctx context.Context, queueID string, token LockToken) error
	// Purge dead-letters every pending message of queueID (feedback Purged)
	// and returns how many it purged.
	Purge(ctx context.Context, queueID string) (int, error)
	// DeleteQueue drops queueID's messages and the pending feedback records
	// they produced, without feedback, as deleting a device does.
	DeleteQueue(ctx context.Context, queueID string) error
	// Pending counts queueID's pending messages.
	Pending(ctx context.Context, queueID string) (Counts, error)
	// Sweep applies every lock and TTL expiry due at the clock's now:
	// dead-letters expired messages (with feedback), signals watchers of
	// messages whose lock expired, releases expired feedback locks and
	// drops expired feedback records.
	Sweep(ctx context.Context) error

	// TakeFeedback locks up to max of the oldest available feedback records.
	// ok is false when none is available.
	TakeFeedback(ctx context.Context, max int) (b FeedbackBatch, ok bool, err error)
	// WatchFeedback is Watch for feedback records.
	WatchFeedback() (<-chan struct{}, func())
	// CompleteFeedback deletes a locked batch's records.
	CompleteFeedback(ctx context.Context, token LockToken) error
	// AbandonFeedback makes a locked batch's records available again,
	// dropping those that reach FeedbackMaxDeliveryCount.
	AbandonFeedback(ctx context.Context, token LockToken) error
	// PendingFeedback counts unexpired feedback records, locked or not.
	PendingFeedback(ctx context.Context) (int, error)

	// Close flushes pending writes and releases the store. It is idempotent.
	Close() error
}

// Next blocks until it locks a message of queueID or ctx ends. It works with
// any Store, using Watch so that it never polls.
func Next(ctx context.Context, s Store, queueID string) (Message, error) {
	ch, stop := s.Watch(queueID)
	defer stop()
	for {
		m, ok, err := s.Lock(ctx, queueID)
		if err != nil || ok {
			return m, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Message{}, fmt.Errorf("c2d: waiting for a message on %q: %w", queueID, ctx.Err())
		}
	}
}
