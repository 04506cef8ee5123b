package methods

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"

	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
)

// IoT Hub error codes of direct methods (the names Node's and C#'s service
// clients read).
const (
	CodeDeviceNotOnline                rest.ErrorCode = "DeviceNotOnline"                // 404103
	CodeGatewayTimeout                 rest.ErrorCode = "GatewayTimeout"                 // 504101
	CodeDeviceConnectionClosedRemotely rest.ErrorCode = "DeviceConnectionClosedRemotely" // 404104
	CodeBadDeviceResponse              rest.ErrorCode = "BadDeviceResponse"
)

// MaxMethodNameLength bounds method names.
const MaxMethodNameLength = 128

// RegisterREST adds POST /twins/{id}/methods and
// POST /twins/{id}/modules/{mid}/methods (ServiceConnect).
func (e *Endpoint) RegisterREST(h *rest.Handler) {
	h.Handle("POST /twins/{id}/methods", auth.ServiceConnect, e.invokeREST)
	h.Handle("POST /twins/{id}/modules/{mid}/methods", auth.ServiceConnect, e.invokeREST)
}

// invokeBody is the REST request. Timeouts are pointers to tell "absent"
// (defaults) from 0.
type invokeBody struct {
	MethodName      string          `json:"methodName"`
	Payload         json.RawMessage `json:"payload"`
	ResponseTimeout *int64          `json:"responseTimeoutInSeconds"`
	ConnectTimeout  *int64          `json:"connectTimeoutInSeconds"`
}

type invokeResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

func (e *Endpoint) invokeREST(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	req, err := e.parseInvoke(r)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	res, err := e.Invoke(r.Context(), req)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	rest.WriteJSON(w, http.StatusOK, invokeResult{Status: res.Status, Payload: res.Payload})
}

func (e *Endpoint) parseInvoke(r *http.Request) (Request, error) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return Request{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var b invokeBody
	if err := dec.Decode(&b); err != nil {
		return Request{}, fmt.Errorf("%w: the body is not a valid method invocation: %v", ErrInvalidRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, fmt.Errorf("%w: extra data after the JSON body", ErrInvalidRequest)
	}
	req := Request{
		DeviceID:        r.PathValue("id"),
		ModuleID:        r.PathValue("mid"),
		MethodName:      b.MethodName,
		Payload:         b.Payload,
		ResponseTimeout: DefaultResponseTimeout,
	}
	if b.ResponseTimeout != nil {
		if req.ResponseTimeout, err = seconds("responseTimeoutInSeconds", *b.ResponseTimeout); err != nil {
			return Request{}, err
		}
	}
	if b.ConnectTimeout != nil {
		if req.ConnectTimeout, err = seconds("connectTimeoutInSeconds", *b.ConnectTimeout); err != nil {
			return Request{}, err
		}
	}
	return req, nil
}

func seconds(name string, n int64) (time.Duration, error) {
	if n < 0 || n > math.MaxInt32 {
		return 0, fmt.Errorf("%w: %s is %d", ErrInvalidRequest, name, n)
	}
	return time.Duration(n) * time.Second, nil
}

// validate checks a request against IoT Hub's rules, filling defaults.
func (e *Endpoint) validate(req *Request) error {
	if req.DeviceID == "" {
		return fmt.Errorf("%w: the device id is empty", ErrInvalidRequest)
	}
	if err := validMethodName(req.MethodName); err != nil {
		return err
	}
	if req.ResponseTimeout == 0 {
		req.ResponseTimeout = DefaultResponseTimeout
	}
	if req.ResponseTimeout < e.cfg.MinResponseTimeout || req.ResponseTimeout > e.cfg.MaxResponseTimeout {
		return fmt.Errorf("%w: responseTimeoutInSeconds must be between %d and %d", ErrInvalidRequest,
			int(e.cfg.MinResponseTimeout/time.Second), int(e.cfg.MaxResponseTimeout/time.Second))
	}
	if req.ConnectTimeout < 0 || req.ConnectTimeout > e.cfg.MaxConnectTimeout {
		return fmt.Errorf("%w: connectTimeoutInSeconds must be between 0 and %d", ErrInvalidRequest, int(e.cfg.MaxConnectTimeout/time.Second))
	}
	if len(req.Payload) > e.cfg.MaxPayloadBytes {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrPayloadTooLarge, len(req.Payload), e.cfg.MaxPayloadBytes)
	}
	if len(req.Payload) > 0 && !json.Valid(req.Payload) {
		return fmt.Errorf("%w: the payload is not valid JSON", ErrInvalidRequest)
	}
	return nil
}

// validMethodName applies IoT Hub's rule for names that travel in MQTT
// topics and AMQP properties: printable US-ASCII without separators.
func validMethodName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: methodName is required", ErrInvalidRequest)
	}
	if len(name) > MaxMethodNameLength {
		return fmt.Errorf("%w: methodName is %d characters, the limit is %d", ErrInvalidRequest, len(name), MaxMethodNameLength)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c > '~' || strings.IndexByte(`$()<>@,;:\"/[]?={}`, c) >= 0 {
			return fmt.Errorf("%w: methodName contains %q (allowed: printable US-ASCII except $()<>@,;:\\\"/[]?={} and space)", ErrInvalidRequest, c)
		}
	}
	return nil
}

// parseResponse reads a device's method response.
func parseResponse(m *frames.Message, maxPayload int) outcome {
	var status int
	switch v := m.ApplicationProperties["IoThub-status"].(type) {
	case int32:
		status = int(v)
	case int64:
		status = int(v)
	case int16:
		status = int(v)
	case int8:
		status = int(v)
	case uint32:
		status = int(v)
	case uint16:
		status = int(v)
	case uint8:
		status = int(v)
	default:
		return outcome{err: fmt.Errorf("%w: application property IoThub-status is %T, want an int", ErrBadResponse, v)}
	}
	var body []byte
	for _, d := range m.Data {
		body = append(body, d...)
	}
	if len(m.Data) == 0 {
		switch v := m.Value.(type) {
		case string:
			body = []byte(v)
		case []byte:
			body = v
		}
	}
	body = bytes.TrimSpace(body)
	switch {
	case len(body) > maxPayload:
		return outcome{err: fmt.Errorf("%w: a payload of %d bytes, the limit is %d", ErrBadResponse, len(body), maxPayload)}
	case len(body) == 0:
		body = []byte("null")
	case !json.Valid(body):
		return outcome{err: fmt.Errorf("%w: the payload is not JSON", ErrBadResponse)}
	default:
		body = bytes.Clone(body)
	}
	return outcome{resp: Response{Status: status, Payload: body}}
}

func (e *Endpoint) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	msg := err.Error()
	switch {
	case errors.Is(err, ErrDeviceNotOnline):
		rest.WriteError(w, http.StatusNotFound, CodeDeviceNotOnline, msg)
	case errors.Is(err, ErrTimeout):
		rest.WriteError(w, http.StatusGatewayTimeout, CodeGatewayTimeout, msg)
	case errors.Is(err, ErrConnectionClosed):
		rest.WriteError(w, http.StatusNotFound, CodeDeviceConnectionClosedRemotely, msg)
	case errors.Is(err, ErrBadResponse):
		rest.WriteError(w, http.StatusBadGateway, CodeBadDeviceResponse, msg)
	case errors.Is(err, ErrPayloadTooLarge), errors.As(err, &tooBig):
		rest.WriteError(w, http.StatusRequestEntityTooLarge, rest.CodeMessageTooLarge, msg)
	case errors.Is(err, ErrInvalidRequest):
		rest.WriteError(w, http.StatusBadRequest, rest.CodeArgumentInvalid, msg)
	case errors.Is(err, registry.ErrDeviceNotFound), errors.Is(err, registry.ErrModuleNotFound), errors.Is(err, registry.ErrClosed):
		status, code := rest.StatusFor(err)
		rest.WriteError(w, status, code, msg)
	case r.Context().Err() != nil:
		// The caller went away; nobody reads this.
		rest.WriteError(w, http.StatusServiceUnavailable, rest.CodeServiceUnavailable, "the request was cancelled")
	default:
		e.log.Error("methods: invocation failed", "path", r.URL.Path, "err", err)
		rest.WriteError(w, http.StatusInternalServerError, rest.CodeServerError, "internal error")
	}
}
