package amqp

import (
	"errors"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
)

// Error is an AMQP error as carried by detach, end, close and rejected.
type Error = frames.Error

// Condition is an AMQP error condition symbol.
type Condition = encoding.Symbol

// Error conditions of the AMQP 1.0 spec, plus the ones Azure services use.
const (
	ErrCondInternalError         Condition = "amqp:internal-error"
	ErrCondNotFound              Condition = "amqp:not-found"
	ErrCondUnauthorizedAccess    Condition = "amqp:unauthorized-access"
	ErrCondDecodeError           Condition = "amqp:decode-error"
	ErrCondResourceLimitExceeded Condition = "amqp:resource-limit-exceeded"
	ErrCondNotAllowed            Condition = "amqp:not-allowed"
	ErrCondInvalidField          Condition = "amqp:invalid-field"
	ErrCondNotImplemented        Condition = "amqp:not-implemented"
	ErrCondResourceLocked        Condition = "amqp:resource-locked"
	ErrCondPreconditionFailed    Condition = "amqp:precondition-failed"
	ErrCondResourceDeleted       Condition = "amqp:resource-deleted"
	ErrCondIllegalState          Condition = "amqp:illegal-state"
	ErrCondFrameSizeTooSmall     Condition = "amqp:frame-size-too-small"

	ErrCondConnectionForced   Condition = "amqp:connection:forced"
	ErrCondFramingError       Condition = "amqp:connection:framing-error"
	ErrCondConnectionRedirect Condition = "amqp:connection:redirect"

	ErrCondWindowViolation  Condition = "amqp:session:window-violation"
	ErrCondErrantLink       Condition = "amqp:session:errant-link"
	ErrCondHandleInUse      Condition = "amqp:session:handle-in-use"
	ErrCondUnattachedHandle Condition = "amqp:session:unattached-handle"

	ErrCondDetachForced          Condition = "amqp:link:detach-forced"
	ErrCondTransferLimitExceeded Condition = "amqp:link:transfer-limit-exceeded"
	ErrCondMessageSizeExceeded   Condition = "amqp:link:message-size-exceeded"
	ErrCondLinkRedirect          Condition = "amqp:link:redirect"
	ErrCondStolen                Condition = "amqp:link:stolen"
)

// Engine errors returned to the hub.
var (
	// ErrLinkClosed is returned by Send and reported to OnSettled callbacks
	// when the link, its session or its connection went away.
	ErrLinkClosed = errors.New("amqp: link closed")
	// ErrNoCredit is returned by TrySend when the peer has granted no credit.
	ErrNoCredit = errors.New("amqp: no link credit")
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("amqp: server closed")
)

// NewError builds an *Error.
func NewError(cond Condition, desc string) *Error {
	return &Error{Condition: cond, Description: desc}
}

// RedirectError builds the amqp:link:redirect error that Azure services
// send to move a client to another endpoint. Port is sent as an int, which
// is what the SDKs parse.
func RedirectError(hostname, networkHost string, port int, address string) *Error {
	return &Error{
		Condition:   ErrCondLinkRedirect,
		Description: "redirect to " + hostname,
		Info: map[any]any{
			encoding.Symbol("hostname"):     hostname,
			encoding.Symbol("network-host"): networkHost,
			encoding.Symbol("port"):         int32(port),
			encoding.Symbol("address"):      address,
		},
	}
}
