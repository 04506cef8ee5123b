package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// Twin is a device or module twin as the service REST API shows it.
type Twin struct {
	DeviceID        string         `json:"deviceId"`
	ModuleID        string         `json:"moduleId,omitempty"`
	ETag            string         `json:"etag,omitempty"`
	Version         int64          `json:"version,omitempty"`
	Status          string         `json:"status,omitempty"`
	ConnectionState string         `json:"connectionState,omitempty"`
	Tags            map[string]any `json:"tags,omitempty"`
	Properties      TwinProperties `json:"properties"`
}

// TwinPatch changes a twin from the service side: tags and desired
// properties, merged as a JSON merge patch (a nil value removes).
type TwinPatch struct {
	Tags    map[string]any
	Desired map[string]any
}

// MarshalJSON writes the patch as the REST API takes it.
func (p TwinPatch) MarshalJSON() ([]byte, error) {
	type props struct {
		Desired map[string]any `json:"desired,omitempty"`
	}
	return json.Marshal(struct {
		Tags       map[string]any `json:"tags,omitempty"`
		Properties *props         `json:"properties,omitempty"`
	}{p.Tags, func() *props {
		if p.Desired == nil {
			return nil
		}
		return &props{p.Desired}
	}()})
}

func twinPath(deviceID, moduleID string) string {
	p := "/twins/" + url.PathEscape(deviceID)
	if moduleID != "" {
		p += "/modules/" + url.PathEscape(moduleID)
	}
	return p
}

// GetTwin reads a device's twin (moduleID "" for the device itself).
func (r *Registry) GetTwin(ctx context.Context, deviceID, moduleID string) (*Twin, error) {
	if deviceID == "" {
		return nil, errors.New("get twin: empty device id")
	}
	var t Twin
	if err := r.do(ctx, http.MethodGet, twinPath(deviceID, moduleID), nil, "", &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// UpdateTwin merges patch into a twin; etag "" (or "*") is unconditional.
// It returns the updated twin.
func (r *Registry) UpdateTwin(ctx context.Context, deviceID, moduleID string, patch TwinPatch, etag string) (*Twin, error) {
	if deviceID == "" {
		return nil, errors.New("update twin: empty device id")
	}
	if patch.Tags == nil && patch.Desired == nil {
		return nil, errors.New("update twin: the patch changes nothing (no tags, no desired properties)")
	}
	if etag == "" {
		etag = "*"
	}
	var t Twin
	if err := r.do(ctx, http.MethodPatch, twinPath(deviceID, moduleID), patch, etag, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// MethodCall is a direct method invocation.
type MethodCall struct {
	// Name is the method name.
	Name string
	// Payload is marshalled as JSON (a json.RawMessage is sent as is).
	Payload any
	// ResponseTimeout bounds the wait for the device's answer (default
	// 30 s on the hub); ConnectTimeout how long the hub waits for the
	// device to come online (default 0: it must be online).
	ResponseTimeout time.Duration
	ConnectTimeout  time.Duration
}

// MethodResult is a device's answer.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// InvokeMethod calls a direct method on a device (moduleID "") or module
// and returns its answer. A device that is not listening gives
// ErrDeviceNotOnline, one that does not answer in time ErrTimeout.
func (r *Registry) InvokeMethod(ctx context.Context, deviceID, moduleID string, call MethodCall) (*MethodResult, error) {
	if deviceID == "" || call.Name == "" {
		return nil, errors.New("invoke method: a device id and a method name are required")
	}
	payload, err := json.Marshal(call.Payload)
	if err != nil {
		return nil, fmt.Errorf("invoke method %s: payload: %w", call.Name, err)
	}
	body := map[string]any{"methodName": call.Name, "payload": json.RawMessage(payload)}
	if call.ResponseTimeout > 0 {
		body["responseTimeoutInSeconds"] = int64((call.ResponseTimeout + time.Second - 1) / time.Second)
	}
	if call.ConnectTimeout > 0 {
		body["connectTimeoutInSeconds"] = int64((call.ConnectTimeout + time.Second - 1) / time.Second)
	}
	if _, ok := ctx.Deadline(); !ok {
		// The hub answers within the call's own timeouts.
		wait := call.ResponseTimeout
		if wait <= 0 {
			wait = 30 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+call.ConnectTimeout+defaultRESTTimeout)
		defer cancel()
	}
	var res MethodResult
	if err := r.do(ctx, http.MethodPost, twinPath(deviceID, moduleID)+"/methods", body, "", &res); err != nil {
		return nil, err
	}
	return &res, nil
}
