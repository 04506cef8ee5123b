// Package frames defines the AMQP 1.0 spec types: frame headers, the nine
// performatives, SASL frames, delivery states, terminus, errors and message
// sections, with their encoders and decoders.
//
// Decoding follows one rule everywhere: a null or absent field takes the
// spec default, and fields beyond those the spec defines are skipped, so
// newer peers that append fields still interoperate.
package frames

import (
	"fmt"
	"time"

	"amqphub/amqp/encoding"
)

// Descriptor codes of the spec types.
const (
	CodeError          uint64 = 0x1d
	CodeOpen           uint64 = 0x10
	CodeBegin          uint64 = 0x11
	CodeAttach         uint64 = 0x12
	CodeFlow           uint64 = 0x13
	CodeTransfer       uint64 = 0x14
	CodeDisposition    uint64 = 0x15
	CodeDetach         uint64 = 0x16
	CodeEnd            uint64 = 0x17
	CodeClose          uint64 = 0x18
	CodeReceived       uint64 = 0x23
	CodeAccepted       uint64 = 0x24
	CodeRejected       uint64 = 0x25
	CodeReleased       uint64 = 0x26
	CodeModified       uint64 = 0x27
	CodeSource         uint64 = 0x28
	CodeTarget         uint64 = 0x29
	CodeSASLMechanisms uint64 = 0x40
	CodeSASLInit       uint64 = 0x41
	CodeSASLChallenge  uint64 = 0x42
	CodeSASLResponse   uint64 = 0x43
	CodeSASLOutcome    uint64 = 0x44
	CodeHeader         uint64 = 0x70
	CodeDeliveryAnn    uint64 = 0x71
	CodeMessageAnn     uint64 = 0x72
	CodeProperties     uint64 = 0x73
	CodeAppProperties  uint64 = 0x74
	CodeData           uint64 = 0x75
	CodeSequence       uint64 = 0x76
	CodeValue          uint64 = 0x77
	CodeFooter         uint64 = 0x78
)

// Role is a link endpoint's role: false for sender, true for receiver.
type Role bool

// The two link roles.
const (
	RoleSender   Role = false
	RoleReceiver Role = true
)

func (r Role) String() string {
	if r == RoleReceiver {
		return "receiver"
	}
	return "sender"
}

// SenderSettleMode is the snd-settle-mode of a link.
type SenderSettleMode uint8

// Sender settle modes.
const (
	SenderSettleUnsettled SenderSettleMode = 0
	SenderSettleSettled   SenderSettleMode = 1
	SenderSettleMixed     SenderSettleMode = 2
)

// ReceiverSettleMode is the rcv-settle-mode of a link.
type ReceiverSettleMode uint8

// Receiver settle modes.
const (
	ReceiverSettleFirst  ReceiverSettleMode = 0
	ReceiverSettleSecond ReceiverSettleMode = 1
)

// Error is the AMQP error type, carried by detach, end, close and rejected.
type Error struct {
	Condition   encoding.Symbol
	Description string
	Info        map[any]any
}

func (e *Error) Error() string {
	if e.Description == "" {
		return string(e.Condition)
	}
	return fmt.Sprintf("%s: %s", e.Condition, e.Description)
}

// DeliveryState is one of Received, Accepted, Rejected, Released, Modified.
type DeliveryState interface {
	encoding.Marshaler
	deliveryState()
}

// Received is the non-terminal state reporting how much of a delivery arrived.
type Received struct {
	SectionNumber uint32
	SectionOffset uint64
}

// Accepted is the terminal outcome for a successfully processed message.
type Accepted struct{}

// Rejected is the terminal outcome for an invalid message.
type Rejected struct{ Error *Error }

// Released is the terminal outcome returning a message unprocessed.
type Released struct{}

// Modified is the terminal outcome returning a message with changes.
type Modified struct {
	DeliveryFailed     bool
	UndeliverableHere  bool
	MessageAnnotations map[any]any
}

func (Received) deliveryState() {}
func (Accepted) deliveryState() {}
func (Rejected) deliveryState() {}
func (Released) deliveryState() {}
func (Modified) deliveryState() {}

// Source is the source terminus of a link.
type Source struct {
	Address               string
	Durable               uint32
	ExpiryPolicy          encoding.Symbol
	Timeout               uint32
	Dynamic               bool
	DynamicNodeProperties map[any]any
	DistributionMode      encoding.Symbol
	// Filter maps filter names to (usually described) filter values, e.g.
	// apache.org:selector-filter:string.
	Filter         map[encoding.Symbol]any
	DefaultOutcome any
	Outcomes       []encoding.Symbol
	Capabilities   []encoding.Symbol
}

// Target is the target terminus of a link.
type Target struct {
	Address               string
	Durable               uint32
	ExpiryPolicy          encoding.Symbol
	Timeout               uint32
	Dynamic               bool
	DynamicNodeProperties map[any]any
	Capabilities          []encoding.Symbol
}

// Header is the message header section.
type Header struct {
	Durable       bool
	Priority      uint8 // default 4
	TTL           time.Duration
	FirstAcquirer bool
	DeliveryCount uint32
}

// Properties is the message properties section. Zero values mean absent.
type Properties struct {
	// MessageID and CorrelationID keep their AMQP type: string, uint64,
	// encoding.UUID or []byte. Replies must echo the same type.
	MessageID          any
	UserID             []byte
	To                 string
	Subject            string
	ReplyTo            string
	CorrelationID      any
	ContentType        encoding.Symbol
	ContentEncoding    encoding.Symbol
	AbsoluteExpiryTime time.Time
	CreationTime       time.Time
	GroupID            string
	GroupSequence      uint32
	ReplyToGroupID     string
}

// Message is a bare message with its annotations.
type Message struct {
	Header                *Header
	DeliveryAnnotations   map[any]any
	Annotations           map[any]any
	Properties            *Properties
	ApplicationProperties map[string]any
	// Body: exactly one kind is normally present.
	Data     [][]byte
	Sequence [][]any
	Value    any
	HasValue bool
	Footer   map[any]any
}
