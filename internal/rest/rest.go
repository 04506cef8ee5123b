// Package rest serves IoT Hub's service REST API over HTTP: the identity
// registry routes that the azure-iothub Registry client uses (devices,
// modules, bulk operations, statistics), behind SAS authorization.
//
// The Handler is a net/http ServeMux with Go 1.22 method patterns; other
// packages add their routes (twins, methods, C2D purge, ...) with Handle,
// which runs the same authorization first.
//
// How the official SDKs reach this handler: the Node azure-iothub Registry
// uses https://{HostName}:443 — the HostName of the connection string is
// passed to https.request as the host and no port is ever set, so HostName
// cannot carry a port ("host:8443" fails DNS lookup) and TLS is mandatory.
// The hub must therefore serve this handler with TLS on port 443 of the
// host named in its connection strings, with a certificate the client
// trusts (NODE_EXTRA_CA_CERTS for Node).
package rest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
)

// Authenticator is the part of auth.Authority the handler uses.
type Authenticator interface {
	Authenticate(ctx context.Context, token string, now time.Time) (auth.Identity, error)
}

// Config configures a Handler.
type Config struct {
	// Registry stores devices and modules; required.
	Registry registry.Store
	// Auth checks Authorization headers; required.
	Auth Authenticator
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock for token expiry; nil means time.Now.
	Now func() time.Time
	// MaxBodyBytes bounds request bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// OnIdentityChange, when set, is called after a device or module was
	// replaced or deleted through this handler (moduleID "" for a device),
	// before the response is written, so that live connections of the
	// identity are checked again at once (the server wires it to the hub's
	// RevalidateDevice/RevalidateModule) and a client that saw the response
	// knows the change took effect. It must not block for long.
	OnIdentityChange func(deviceID, moduleID string)
}

// DefaultMaxBodyBytes is the default request body limit. A bulk request of
// 100 devices is well under it.
const DefaultMaxBodyBytes = 1 << 20

// AuthorizedFunc handles a request whose caller has been authenticated and
// holds the rights the route requires.
type AuthorizedFunc func(w http.ResponseWriter, r *http.Request, id auth.Identity)

// Handler is the service REST http.Handler.
type Handler struct {
	mux     *http.ServeMux
	reg     registry.Store
	auth    Authenticator
	log     *slog.Logger
	now     func() time.Time
	maxBody int64
	changed func(deviceID, moduleID string)

	liveMu sync.Mutex
	live   []LiveSource
}

// New returns a Handler with the registry routes installed.
func New(cfg Config) (*Handler, error) {
	if cfg.Registry == nil {
		return nil, errors.New("rest config: Registry is required")
	}
	if cfg.Auth == nil {
		return nil, errors.New("rest config: Auth is required")
	}
	h := &Handler{
		mux:     http.NewServeMux(),
		reg:     cfg.Registry,
		auth:    cfg.Auth,
		log:     cfg.Logger,
		now:     cfg.Now,
		maxBody: cfg.MaxBodyBytes,
		changed: cfg.OnIdentityChange,
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	h.registerRegistryRoutes()
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

// Handle registers fn for a ServeMux pattern such as "GET /twins/{id}".
// Before fn runs, the Authorization header must hold a SAS token that
// authenticates, whose identity has every right in need, and whose resource
// covers the request path; otherwise the caller gets 401 in IoT Hub's error
// format. The api-version query parameter is accepted and not checked.
func (h *Handler) Handle(pattern string, need auth.Rights, fn AuthorizedFunc) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		id, ok := h.authorize(w, r, need)
		if !ok {
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, h.maxBody)
		fn(w, r, id)
	})
}

func (h *Handler) authorize(w http.ResponseWriter, r *http.Request, need auth.Rights) (auth.Identity, bool) {
	token := r.Header.Get("Authorization")
	if token == "" {
		WriteError(w, http.StatusUnauthorized, CodeUnauthorized, "the Authorization header is missing; send a SharedAccessSignature token")
		return auth.Identity{}, false
	}
	id, err := h.auth.Authenticate(r.Context(), token, h.now())
	if err != nil {
		if !errors.Is(err, auth.ErrUnauthorized) {
			h.log.Error("rest: authenticating request", "method", r.Method, "path", r.URL.Path, "err", err)
			WriteError(w, http.StatusInternalServerError, CodeServerError, "authentication failed on the server")
			return auth.Identity{}, false
		}
		h.log.Info("rest: unauthorized", "method", r.Method, "path", r.URL.Path, "reason", err.Error())
		WriteError(w, http.StatusUnauthorized, CodeUnauthorized, "the token is invalid or expired")
		return auth.Identity{}, false
	}
	if !id.Rights.Has(need) {
		h.log.Info("rest: insufficient rights", "method", r.Method, "path", r.URL.Path, "policy", id.PolicyName, "has", id.Rights.String(), "need", need.String())
		WriteError(w, http.StatusUnauthorized, CodeUnauthorized, fmt.Sprintf("the token lacks %s", need))
		return auth.Identity{}, false
	}
	if !id.Covers(r.URL.Path) {
		WriteError(w, http.StatusUnauthorized, CodeUnauthorized, "the token's resource does not cover this path")
		return auth.Identity{}, false
	}
	return id, true
}

// ErrorCode is an IoT Hub error code name, as it appears after "ErrorCode:"
// in error bodies and in the iothub-errorcode header.
type ErrorCode string

// Error codes this package produces. SDKs map them to typed errors: Node
// reads the name (DeviceNotFound, ...), C# the name or number.
const (
	CodeArgumentInvalid     ErrorCode = "ArgumentInvalid"          // 400004
	CodeFormatError         ErrorCode = "IotHubFormatError"        // 400006
	CodeUnauthorized        ErrorCode = "IotHubUnauthorizedAccess" // 401002
	CodeDeviceNotFound      ErrorCode = "DeviceNotFound"           // 404001
	CodeModuleNotFound      ErrorCode = "ModuleNotFound"           // 404010
	CodeNotFound            ErrorCode = "NotFound"
	CodeDeviceAlreadyExists ErrorCode = "DeviceAlreadyExists"         // 409001
	CodeModuleAlreadyExists ErrorCode = "ModuleAlreadyExistsOnDevice" // 409301
	CodePreconditionFailed  ErrorCode = "PreconditionFailed"          // 412001
	CodeTooManyDevices      ErrorCode = "TooManyDevices"              // 413002
	CodeMessageTooLarge     ErrorCode = "MessageTooLarge"             // 413001
	CodeServerError         ErrorCode = "ServerError"                 // 500001
	CodeServiceUnavailable  ErrorCode = "ServiceUnavailable"          // 503001
)

// errorBody is IoT Hub's error shape. The Node SDK splits Message on ';' and
// takes the code after "ErrorCode:" and the text after the first ';'; C#
// takes the name after "ErrorCode:" too.
type errorBody struct {
	Message          string `json:"Message"`
	ExceptionMessage string `json:"ExceptionMessage"`
}

// NoSpaceMessage is the message of a 503 for a write refused because the
// hub's disk is full.
const NoSpaceMessage = "insufficient disk space: the hub refuses writes until space returns, retry later"

// RetryAfterSeconds is the Retry-After of 503 responses: the hub is
// shutting down or its disk is full, and either passes within seconds or
// needs an operator.
const RetryAfterSeconds = "10"

// WriteError writes an IoT Hub error response: status, the
// iothub-errorcode header and a body
// {"Message":"ErrorCode:<code>;<message>","ExceptionMessage":"Tracking ID:..."}.
// Semicolons in message are replaced because clients split on them. A 503
// carries a Retry-After header.
func WriteError(w http.ResponseWriter, status int, code ErrorCode, message string) {
	message = strings.ReplaceAll(message, ";", ",")
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", RetryAfterSeconds)
	}
	var tid [8]byte
	_, _ = rand.Read(tid[:])
	body := errorBody{
		Message:          "ErrorCode:" + string(code) + ";" + message,
		ExceptionMessage: "Tracking ID:" + hex.EncodeToString(tid[:]) + "-TimeStamp:" + time.Now().UTC().Format("01/02/2006 15:04:05"),
	}
	w.Header().Set("iothub-errorcode", string(code))
	WriteJSON(w, status, body)
}

// WriteJSON writes v as JSON with the content type the SDKs require before
// they parse a body (application/json).
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// WriteRegistryError maps a registry error to its HTTP status and IoT Hub
// error code; anything unrecognised is logged and answered with 500 without
// its details.
func (h *Handler) WriteRegistryError(w http.ResponseWriter, r *http.Request, err error) {
	status, code := StatusFor(err)
	if errors.Is(err, pebbleutil.ErrNoSpace) {
		// The store's guard logged the details (directory, figures) once;
		// the client learns the cause.
		WriteError(w, status, code, NoSpaceMessage)
		return
	}
	if status == http.StatusInternalServerError {
		h.log.Error("rest: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		WriteError(w, status, code, "internal error")
		return
	}
	WriteError(w, status, code, err.Error())
}

// StatusFor returns the HTTP status and error code for a registry (or
// request decoding) error.
func StatusFor(err error) (int, ErrorCode) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, registry.ErrDeviceNotFound):
		return http.StatusNotFound, CodeDeviceNotFound
	case errors.Is(err, registry.ErrModuleNotFound):
		return http.StatusNotFound, CodeModuleNotFound
	case errors.Is(err, registry.ErrDeviceAlreadyExists):
		return http.StatusConflict, CodeDeviceAlreadyExists
	case errors.Is(err, registry.ErrModuleAlreadyExists):
		return http.StatusConflict, CodeModuleAlreadyExists
	case errors.Is(err, registry.ErrPreconditionFailed):
		return http.StatusPreconditionFailed, CodePreconditionFailed
	case errors.Is(err, registry.ErrInvalidArgument):
		return http.StatusBadRequest, CodeArgumentInvalid
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, CodeMessageTooLarge
	case errors.Is(err, errBadJSON):
		return http.StatusBadRequest, CodeFormatError
	case errors.Is(err, registry.ErrClosed), errors.Is(err, registry.ErrUnavailable):
		// ErrUnavailable: a cluster node cannot reach NATS; retrying
		// (on this node later, or on another) may succeed.
		return http.StatusServiceUnavailable, CodeServiceUnavailable
	case errors.Is(err, pebbleutil.ErrNoSpace):
		// The store refuses writes until disk space returns: the
		// request may succeed when retried.
		return http.StatusServiceUnavailable, CodeServiceUnavailable
	}
	return http.StatusInternalServerError, CodeServerError
}
