package frames

import (
	"time"

	"amqphub/amqp/encoding"
)

// Performative is any AMQP or SASL frame body.
type Performative interface {
	encoding.Marshaler
	// Code is the descriptor code.
	Code() uint64
}

// Open negotiates connection parameters.
type Open struct {
	ContainerID         string
	Hostname            string
	MaxFrameSize        uint32 // default 4294967295
	ChannelMax          uint16 // default 65535
	IdleTimeout         time.Duration
	OutgoingLocales     []encoding.Symbol
	IncomingLocales     []encoding.Symbol
	OfferedCapabilities []encoding.Symbol
	DesiredCapabilities []encoding.Symbol
	Properties          map[any]any
}

// Begin starts a session.
type Begin struct {
	RemoteChannel       uint16
	HasRemoteChannel    bool
	NextOutgoingID      uint32
	IncomingWindow      uint32
	OutgoingWindow      uint32
	HandleMax           uint32 // default 4294967295
	OfferedCapabilities []encoding.Symbol
	DesiredCapabilities []encoding.Symbol
	Properties          map[any]any
}

// Attach attaches a link to a session.
type Attach struct {
	Name                 string
	Handle               uint32
	Role                 Role
	SenderSettleMode     SenderSettleMode // default mixed
	ReceiverSettleMode   ReceiverSettleMode
	Source               *Source
	Target               *Target
	Unsettled            map[any]any
	IncompleteUnsettled  bool
	InitialDeliveryCount uint32
	HasInitialDelivery   bool
	MaxMessageSize       uint64 // 0 = no limit
	OfferedCapabilities  []encoding.Symbol
	DesiredCapabilities  []encoding.Symbol
	Properties           map[any]any
}

// Flow updates session windows and, with a handle, link credit. Optional
// fields have Has flags because "absent" and "zero" differ in meaning and a
// reused struct must not allocate pointers.
type Flow struct {
	NextIncomingID    uint32
	HasNextIncomingID bool
	IncomingWindow    uint32
	NextOutgoingID    uint32
	OutgoingWindow    uint32
	Handle            uint32
	HasHandle         bool
	DeliveryCount     uint32
	HasDeliveryCount  bool
	LinkCredit        uint32
	HasLinkCredit     bool
	Available         uint32
	HasAvailable      bool
	Drain             bool
	Echo              bool
	Properties        map[any]any
}

// Transfer carries (part of) a message.
type Transfer struct {
	Handle             uint32
	DeliveryID         uint32
	HasDeliveryID      bool
	DeliveryTag        []byte // aliases the frame buffer when decoded
	MessageFormat      uint32
	HasMessageFormat   bool
	Settled            bool
	HasSettled         bool
	More               bool
	ReceiverSettleMode ReceiverSettleMode
	HasRcvSettleMode   bool
	State              DeliveryState
	Resume             bool
	Aborted            bool
	Batchable          bool
	// Payload is the message bytes that follow the performative in the
	// frame; it aliases the frame buffer when decoded.
	Payload []byte
}

// Disposition reports delivery state changes for a range of deliveries.
type Disposition struct {
	Role      Role
	First     uint32
	Last      uint32
	HasLast   bool
	Settled   bool
	State     DeliveryState
	Batchable bool
}

// Detach detaches a link; Closed also closes it.
type Detach struct {
	Handle uint32
	Closed bool
	Error  *Error
}

// End ends a session.
type End struct{ Error *Error }

// Close closes the connection.
type Close struct{ Error *Error }

// SASLMechanisms lists the server's SASL mechanisms.
type SASLMechanisms struct{ Mechanisms []encoding.Symbol }

// SASLInit selects a mechanism and carries its initial response.
type SASLInit struct {
	Mechanism       encoding.Symbol
	InitialResponse []byte
	Hostname        string
}

// SASLChallenge carries a server challenge.
type SASLChallenge struct{ Challenge []byte }

// SASLResponse carries a client response.
type SASLResponse struct{ Response []byte }

// SASLCode is the outcome of a SASL exchange.
type SASLCode uint8

// SASL outcome codes.
const (
	SASLOK      SASLCode = 0
	SASLAuth    SASLCode = 1
	SASLSys     SASLCode = 2
	SASLSysPerm SASLCode = 3
	SASLSysTemp SASLCode = 4
)

// SASLOutcome ends a SASL exchange.
type SASLOutcome struct {
	Result         SASLCode
	AdditionalData []byte
}

// Code implementations.
func (*Open) Code() uint64           { return CodeOpen }
func (*Begin) Code() uint64          { return CodeBegin }
func (*Attach) Code() uint64         { return CodeAttach }
func (*Flow) Code() uint64           { return CodeFlow }
func (*Transfer) Code() uint64       { return CodeTransfer }
func (*Disposition) Code() uint64    { return CodeDisposition }
func (*Detach) Code() uint64         { return CodeDetach }
func (*End) Code() uint64            { return CodeEnd }
func (*Close) Code() uint64          { return CodeClose }
func (*SASLMechanisms) Code() uint64 { return CodeSASLMechanisms }
func (*SASLInit) Code() uint64       { return CodeSASLInit }
func (*SASLChallenge) Code() uint64  { return CodeSASLChallenge }
func (*SASLResponse) Code() uint64   { return CodeSASLResponse }
func (*SASLOutcome) Code() uint64    { return CodeSASLOutcome }
