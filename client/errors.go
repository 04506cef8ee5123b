package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	goamqp "github.com/Azure/go-amqp"
)

// More errors matched with errors.Is. They match *AMQPError values by
// condition and *Error (REST) values by status and IoT Hub error code, so
// callers test one sentinel whatever the transport.
var (
	// ErrQueueDepthExceeded: the device's cloud-to-device queue is full
	// (amqp:resource-limit-exceeded; IoT Hub allows 50 messages).
	ErrQueueDepthExceeded = errors.New("device queue depth exceeded")
	// ErrThrottled: the hub throttles the client; retry later.
	ErrThrottled = errors.New("throttled")
	// ErrQuotaExceeded: the hub's daily message quota is used up.
	ErrQuotaExceeded = errors.New("quota exceeded")
	// ErrMessageTooLarge: the message exceeds the hub's size limit.
	ErrMessageTooLarge = errors.New("message too large")
	// ErrLockLost: a cloud-to-device message or feedback batch was settled
	// after its lock expired or its link went away.
	ErrLockLost = errors.New("message lock lost")
	// ErrTimeout: the hub (or the device, for a direct method) did not
	// answer in time.
	ErrTimeout = errors.New("operation timed out")
	// ErrDeviceNotOnline: a direct method found no device listening.
	ErrDeviceNotOnline = errors.New("device not online")
	// ErrNotImplemented: the hub does not implement the operation.
	ErrNotImplemented = errors.New("not implemented")
	// ErrConnectionLost: the connection (or link) went away; the operation
	// may or may not have taken effect.
	ErrConnectionLost = errors.New("connection lost")
	// ErrClosed: the client was closed.
	ErrClosed = errors.New("client closed")
)

// AMQPError is an error the hub reported over AMQP: a rejected message, a
// refused or detached link, a closed session or connection. Use errors.Is
// with the package's sentinels rather than comparing conditions.
type AMQPError struct {
	// Condition is the AMQP error condition, e.g. "amqp:not-found".
	Condition string
	// Description is the hub's explanation.
	Description string
	// Info is the error's info map (e.g. a redirect's hostname and port).
	Info map[string]any
	// err is the go-amqp error it came from.
	err error
}

func (e *AMQPError) Error() string {
	if e.Description == "" {
		return e.Condition
	}
	return e.Condition + ": " + e.Description
}

// Unwrap returns the underlying go-amqp error.
func (e *AMQPError) Unwrap() error { return e.err }

// Is maps conditions to the package's sentinel errors.
func (e *AMQPError) Is(target error) bool {
	c := e.Condition
	switch target {
	case ErrUnauthorized:
		return c == string(goamqp.ErrCondUnauthorizedAccess)
	case ErrDeviceNotFound:
		return c == string(goamqp.ErrCondNotFound) || c == "com.microsoft:device-not-found"
	case ErrQueueDepthExceeded:
		return c == string(goamqp.ErrCondResourceLimitExceeded)
	case ErrThrottled:
		return c == "com.microsoft:device-container-throttled" || c == "com.microsoft:server-busy"
	case ErrQuotaExceeded:
		return c == "com.microsoft:quota-exceeded"
	case ErrMessageTooLarge:
		return c == string(goamqp.ErrCondMessageSizeExceeded)
	case ErrLockLost:
		return c == "com.microsoft:message-lock-lost"
	case ErrTimeout:
		return c == "com.microsoft:timeout"
	case ErrNotImplemented:
		return c == string(goamqp.ErrCondNotImplemented)
	case ErrPreconditionFailed:
		return c == "com.microsoft:precondition-failed" || c == string(goamqp.ErrCondPreconditionFailed)
	case ErrDeviceAlreadyExists:
		return c == "com.microsoft:device-already-exists"
	case ErrConnectionLost:
		return c == string(goamqp.ErrCondConnectionForced) || c == string(goamqp.ErrCondDetachForced)
	}
	return false
}

// CBSError is a refused put-token: the hub did not accept the token for
// the audience.
type CBSError struct {
	Audience    string
	Status      int
	Description string
}

func (e *CBSError) Error() string {
	return fmt.Sprintf("token for %s refused: %d %s", e.Audience, e.Status, e.Description)
}

// Is maps CBS status codes to the package's sentinel errors.
func (e *CBSError) Is(target error) bool {
	switch target {
	case ErrUnauthorized:
		return e.Status == 401 || e.Status == 403
	case ErrDeviceNotFound:
		return e.Status == 404
	case ErrThrottled:
		return e.Status == 429
	case ErrTimeout:
		return e.Status == 408 || e.Status == 504
	}
	return false
}

// amqpErr converts an error of go-amqp into the package's form: remote
// AMQP errors become *AMQPError; closures without one wrap
// ErrConnectionLost. op says what was being done.
func amqpErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var remote *goamqp.Error
	var linkErr *goamqp.LinkError
	var sessErr *goamqp.SessionError
	var connErr *goamqp.ConnError
	switch {
	case errors.As(err, &linkErr) && linkErr.RemoteErr != nil:
		remote = linkErr.RemoteErr
	case errors.As(err, &sessErr) && sessErr.RemoteErr != nil:
		remote = sessErr.RemoteErr
	case errors.As(err, &connErr) && connErr.RemoteErr != nil:
		remote = connErr.RemoteErr
	case errors.As(err, &remote):
	}
	if remote != nil {
		info := make(map[string]any, len(remote.Info))
		for k, v := range remote.Info {
			info[k] = v
		}
		return fmt.Errorf("%s: %w", op, &AMQPError{Condition: string(remote.Condition), Description: remote.Description, Info: info, err: err})
	}
	if linkErr != nil || sessErr != nil || connErr != nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%s: %w: %w", op, ErrConnectionLost, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// retryable reports whether an operation that failed with err may succeed
// if tried again (after a reconnect): lost connections, throttling, server
// timeouts and internal errors. Authentication, not-found, size and
// argument errors are final, as are TLS verification failures.
func retryable(err error) bool {
	if err == nil || errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var cbs *CBSError
	if errors.As(err, &cbs) {
		return cbs.Status >= 500 || cbs.Status == 429 || cbs.Status == 408
	}
	var ae *AMQPError
	if errors.As(err, &ae) {
		switch ae.Condition {
		case string(goamqp.ErrCondConnectionForced), string(goamqp.ErrCondDetachForced),
			string(goamqp.ErrCondInternalError), string(goamqp.ErrCondStolen),
			"com.microsoft:timeout", "com.microsoft:server-busy", "com.microsoft:device-container-throttled":
			return true
		}
		// A session error ends the session (and this client's connection
		// with it); a new connection starts afresh.
		return strings.HasPrefix(ae.Condition, "amqp:session:")
	}
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) {
		return false
	}
	if errors.Is(err, ErrConnectionLost) {
		return true
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	// go-amqp reports some transport failures as plain errors.
	s := err.Error()
	return strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe") || strings.Contains(s, "connection refused")
}
