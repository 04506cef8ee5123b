package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Device is a device identity as the registry REST API returns it.
type Device struct {
	DeviceID                  string         `json:"deviceId"`
	GenerationID              string         `json:"generationId,omitempty"`
	ETag                      string         `json:"etag,omitempty"`
	ConnectionState           string         `json:"connectionState,omitempty"`
	Status                    string         `json:"status,omitempty"`
	StatusReason              string         `json:"statusReason,omitempty"`
	LastActivityTime          time.Time      `json:"lastActivityTime,omitempty"`
	CloudToDeviceMessageCount int            `json:"cloudToDeviceMessageCount,omitempty"`
	Authentication            Authentication `json:"authentication"`
}

// Authentication holds a device's SAS keys.
type Authentication struct {
	Type         string       `json:"type,omitempty"`
	SymmetricKey SymmetricKey `json:"symmetricKey"`
}

// SymmetricKey is a device's primary and secondary keys (base64).
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// APIVersion is the REST api-version sent with every request.
const APIVersion = "2021-04-12"

// defaultRESTTimeout bounds REST requests whose context has no deadline.
const defaultRESTTimeout = 30 * time.Second

// Registry talks to a hub's registry REST API with a shared access policy.
type Registry struct {
	hub    ServiceConnection
	base   string
	http   *http.Client
	policy string
	key    []byte
}

// RegistryOptions adjusts how a Registry reaches the hub.
type RegistryOptions struct {
	// TLSConfig trusts the hub's certificate (e.g. amqphub's local CA).
	TLSConfig *tls.Config
	// BaseURL overrides https://{HostName} (e.g. https://localhost:8443).
	BaseURL string
	// HTTPClient replaces the default client (TLSConfig is then ignored).
	HTTPClient *http.Client
}

// NewRegistry returns a registry client from a service connection string
// (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).
func NewRegistry(connectionString string, opts *RegistryOptions) (*Registry, error) {
	cs, err := ParseServiceConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &RegistryOptions{}
	}
	key, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey)
	if err != nil {
		return nil, fmt.Errorf("client: SharedAccessKey is not base64: %w", err)
	}
	r := &Registry{hub: cs, base: "https://" + cs.HostName, policy: cs.SharedAccessKeyName, key: key, http: opts.HTTPClient}
	if opts.BaseURL != "" {
		r.base = strings.TrimSuffix(opts.BaseURL, "/")
	}
	if r.http == nil {
		// No client-wide timeout: method calls may legitimately take
		// minutes; do bounds requests whose context has no deadline.
		r.http = &http.Client{Transport: &http.Transport{TLSClientConfig: opts.TLSConfig, Proxy: http.ProxyFromEnvironment}}
	}
	return r, nil
}

// Error is an error response of the hub's REST API.
type Error struct {
	StatusCode int
	// Code is IoT Hub's error code, e.g. DeviceNotFound.
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("hub returned %d %s: %s", e.StatusCode, e.Code, e.Message)
	}
	return fmt.Sprintf("hub returned %d: %s", e.StatusCode, e.Message)
}

// Errors matched with errors.Is against *Error values.
var (
	ErrDeviceNotFound      = errors.New("device not found")
	ErrDeviceAlreadyExists = errors.New("device already exists")
	ErrUnauthorized        = errors.New("unauthorized")
	ErrPreconditionFailed  = errors.New("precondition failed")
)

// Is maps REST status codes to the package's sentinel errors.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrDeviceNotFound:
		return e.StatusCode == http.StatusNotFound && e.Code != "DeviceNotOnline" && e.Code != "DeviceConnectionClosedRemotely"
	case ErrDeviceNotOnline:
		return e.Code == "DeviceNotOnline" || e.Code == "DeviceConnectionClosedRemotely"
	case ErrTimeout:
		return e.StatusCode == http.StatusGatewayTimeout || e.StatusCode == http.StatusRequestTimeout
	case ErrThrottled:
		return e.StatusCode == http.StatusTooManyRequests
	case ErrMessageTooLarge:
		return e.StatusCode == http.StatusRequestEntityTooLarge
	case ErrQueueDepthExceeded:
		return e.Code == "DeviceMaximumQueueDepthExceeded"
	case ErrQuotaExceeded:
		return e.Code == "IotHubQuotaExceeded"
	case ErrNotImplemented:
		return e.StatusCode == http.StatusNotImplemented
	case ErrDeviceAlreadyExists:
		return e.StatusCode == http.StatusConflict
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized
	case ErrPreconditionFailed:
		return e.StatusCode == http.StatusPreconditionFailed
	}
	return false
}

func (r *Registry) do(ctx context.Context, method, path string, body any, ifMatch string, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	u := r.base + path + sep + "api-version=" + APIVersion
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRESTTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", SignToken(r.hub.HostName, r.key, r.policy, time.Now().Add(time.Hour)))
	req.Header.Set("User-Agent", UserAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, r.base+path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return parseRESTError(resp.StatusCode, b)
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding %s %s response: %w", method, path, err)
		}
	}
	return nil
}

// parseRESTError reads IoT Hub's {"Message":"ErrorCode:X;text"} bodies.
func parseRESTError(status int, body []byte) error {
	e := &Error{StatusCode: status, Message: strings.TrimSpace(string(body))}
	var eb struct{ Message string }
	if json.Unmarshal(body, &eb) == nil && eb.Message != "" {
		e.Message = eb.Message
		if rest, ok := strings.CutPrefix(eb.Message, "ErrorCode:"); ok {
			code, msg, _ := strings.Cut(rest, ";")
			e.Code, e.Message = code, msg
		}
	}
	return e
}

func devicePath(id string) string { return "/devices/" + url.PathEscape(id) }

// CreateDevice creates a device; keys are generated when d has none.
func (r *Registry) CreateDevice(ctx context.Context, d Device) (Device, error) {
	if d.Authentication.Type == "" {
		d.Authentication.Type = "sas"
	}
	var out Device
	err := r.do(ctx, http.MethodPut, devicePath(d.DeviceID), d, "", &out)
	return out, err
}

// UpdateDevice replaces a device; etag "" or "*" is unconditional.
func (r *Registry) UpdateDevice(ctx context.Context, d Device, etag string) (Device, error) {
	if etag == "" {
		etag = "*"
	}
	var out Device
	err := r.do(ctx, http.MethodPut, devicePath(d.DeviceID), d, etag, &out)
	return out, err
}

// GetDevice reads a device.
func (r *Registry) GetDevice(ctx context.Context, id string) (Device, error) {
	var out Device
	err := r.do(ctx, http.MethodGet, devicePath(id), nil, "", &out)
	return out, err
}

// ListDevices lists up to top devices (top <= 0: the server's default).
func (r *Registry) ListDevices(ctx context.Context, top int) ([]Device, error) {
	path := "/devices"
	if top > 0 {
		path = fmt.Sprintf("/devices?top=%d", top)
	}
	var out []Device
	err := r.do(ctx, http.MethodGet, path, nil, "", &out)
	return out, err
}

// DeleteDevice deletes a device; etag "" deletes unconditionally.
func (r *Registry) DeleteDevice(ctx context.Context, id, etag string) error {
	if etag == "" {
		etag = "*"
	}
	return r.do(ctx, http.MethodDelete, devicePath(id), nil, etag, nil)
}

// HostName returns the hub host name of the connection string.
func (r *Registry) HostName() string { return r.hub.HostName }

// Close releases the Registry's idle HTTP connections. The Registry stays
// usable (a later request opens a new connection).
func (r *Registry) Close() error {
	r.http.CloseIdleConnections()
	return nil
}
