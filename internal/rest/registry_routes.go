package rest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"amqphub/internal/auth"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
)

// MaxListTop is the largest page GET /devices returns, as in IoT Hub.
const MaxListTop = 1000

var errBadJSON = errors.New("request body is not valid JSON")

func (h *Handler) registerRegistryRoutes() {
	h.Handle("GET /devices", auth.RegistryRead, h.listDevices)
	// The Node SDK lists with "/devices/?api-version=..." (devicePath('')).
	h.Handle("GET /devices/{$}", auth.RegistryRead, h.listDevices)
	h.Handle("POST /devices", auth.RegistryWrite, h.bulkDevices)
	h.Handle("GET /devices/{id}", auth.RegistryRead, h.getDevice)
	h.Handle("PUT /devices/{id}", auth.RegistryWrite, h.putDevice)
	h.Handle("DELETE /devices/{id}", auth.RegistryWrite, h.deleteDevice)
	h.Handle("GET /devices/{id}/modules", auth.RegistryRead, h.listModules)
	h.Handle("GET /devices/{id}/modules/{mid}", auth.RegistryRead, h.getModule)
	h.Handle("PUT /devices/{id}/modules/{mid}", auth.RegistryWrite, h.putModule)
	h.Handle("DELETE /devices/{id}/modules/{mid}", auth.RegistryWrite, h.deleteModule)
	h.Handle("GET /statistics/devices", auth.RegistryRead, h.deviceStatistics)
}

// authInput is the writable part of an authentication object. Pointers
// and plain strings accept the nulls SDKs send for unset fields.
type authInput struct {
	Type         registry.AuthType `json:"type"`
	SymmetricKey *struct {
		PrimaryKey   string `json:"primaryKey"`
		SecondaryKey string `json:"secondaryKey"`
	} `json:"symmetricKey"`
	X509Thumbprint *struct {
		PrimaryThumbprint   string `json:"primaryThumbprint"`
		SecondaryThumbprint string `json:"secondaryThumbprint"`
	} `json:"x509Thumbprint"`
}

func (a *authInput) toRegistry() registry.Authentication {
	var out registry.Authentication
	if a == nil {
		return out
	}
	out.Type = a.Type
	if a.SymmetricKey != nil {
		out.SymmetricKey = registry.SymmetricKey{PrimaryKey: a.SymmetricKey.PrimaryKey, SecondaryKey: a.SymmetricKey.SecondaryKey}
	}
	if a.X509Thumbprint != nil {
		out.X509Thumbprint = registry.X509Thumbprint{PrimaryThumbprint: a.X509Thumbprint.PrimaryThumbprint, SecondaryThumbprint: a.X509Thumbprint.SecondaryThumbprint}
	}
	return out
}

// deviceInput is the writable part of a device. Service-set fields
// (etag, generationId, times, counts, connection state) are ignored, so a
// Device read with GET can be sent back as it is, and the Node SDK's Device
// class (which sends cloudToDeviceMessageCount as a string) is accepted.
type deviceInput struct {
	DeviceID       string          `json:"deviceId"`
	Status         registry.Status `json:"status"`
	StatusReason   string          `json:"statusReason"`
	Authentication *authInput      `json:"authentication"`
	Capabilities   *struct {
		IoTEdge bool `json:"iotEdge"`
	} `json:"capabilities"`
	DeviceScope  string   `json:"deviceScope"`
	ParentScopes []string `json:"parentScopes"`
}

func (in deviceInput) toRegistry() registry.Device {
	d := registry.Device{
		DeviceID:       in.DeviceID,
		Status:         in.Status,
		StatusReason:   in.StatusReason,
		Authentication: in.Authentication.toRegistry(),
		DeviceScope:    in.DeviceScope,
		ParentScopes:   in.ParentScopes,
	}
	if in.Capabilities != nil {
		d.Capabilities.IoTEdge = in.Capabilities.IoTEdge
	}
	return d
}

type moduleInput struct {
	ModuleID       string     `json:"moduleId"`
	DeviceID       string     `json:"deviceId"`
	Authentication *authInput `json:"authentication"`
	ManagedBy      string     `json:"managedBy"`
}

// decodeBody reads one JSON value into v. An empty body or a JSON null is
// an error: every route that reads a body needs one (decoding null into a
// struct would silently leave it zero, creating a device with defaults).
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: the body is empty", errBadJSON)
		}
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: extra data after the JSON value", errBadJSON)
	}
	if _, err := dec.Token(); err != io.EOF {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return fmt.Errorf("%w: extra data after the JSON value", errBadJSON)
	}
	if string(raw) == "null" {
		return fmt.Errorf("%w: the body is null, it must be a JSON object", errBadJSON)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %v", errBadJSON, err)
	}
	return nil
}

// identityChanged tells the server that an identity's credentials or
// status may have changed, so that its live connections are checked now.
func (h *Handler) identityChanged(deviceID, moduleID string) {
	if h.changed != nil {
		h.changed(deviceID, moduleID)
	}
}

// ifMatch returns the If-Match header and whether it was sent.
func ifMatch(r *http.Request) (string, bool) {
	v, ok := r.Header["If-Match"]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[0], true
}

func setETag(w http.ResponseWriter, etag string) {
	w.Header().Set("ETag", `"`+etag+`"`)
}

func (h *Handler) getDevice(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	d, err := h.reg.GetDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	h.fillDevice(r.Context(), &d)
	setETag(w, d.ETag)
	WriteJSON(w, http.StatusOK, d)
}

func (h *Handler) listDevices(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	top := MaxListTop
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxListTop {
			WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("top must be an integer from 1 to %d", MaxListTop))
			return
		}
		top = n
	}
	ds, err := h.reg.ListDevices(r.Context(), "", top)
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if ds == nil {
		ds = []registry.Device{}
	}
	for i := range ds {
		h.fillDevice(r.Context(), &ds[i])
	}
	WriteJSON(w, http.StatusOK, ds)
}

// putDevice creates the device when no If-Match is sent (409 if it exists,
// as IoT Hub does) and replaces it otherwise (404 if missing, 412 if the
// etag is stale; "*" matches any).
func (h *Handler) putDevice(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	id := r.PathValue("id")
	var in deviceInput
	if err := decodeBody(r, &in); err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if in.DeviceID == "" {
		in.DeviceID = id
	}
	if in.DeviceID != id {
		WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("deviceId %q in the body does not match %q in the URL", in.DeviceID, id))
		return
	}
	var d registry.Device
	var err error
	etag, conditional := ifMatch(r)
	if conditional {
		d, err = h.reg.ReplaceDevice(r.Context(), in.toRegistry(), etag)
	} else {
		d, err = h.reg.CreateDevice(r.Context(), in.toRegistry())
	}
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if conditional {
		h.identityChanged(d.DeviceID, "")
	}
	setETag(w, d.ETag)
	WriteJSON(w, http.StatusOK, d)
}

func (h *Handler) deleteDevice(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	etag, _ := ifMatch(r)
	if err := h.reg.DeleteDevice(r.Context(), r.PathValue("id"), etag); err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	h.identityChanged(r.PathValue("id"), "")
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) listModules(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	ms, err := h.reg.ListModules(r.Context(), r.PathValue("id"))
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	for i := range ms {
		h.fillModule(r.Context(), &ms[i])
	}
	WriteJSON(w, http.StatusOK, ms)
}

func (h *Handler) getModule(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	m, err := h.reg.GetModule(r.Context(), r.PathValue("id"), r.PathValue("mid"))
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	h.fillModule(r.Context(), &m)
	setETag(w, m.ETag)
	WriteJSON(w, http.StatusOK, m)
}

func (h *Handler) putModule(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	did, mid := r.PathValue("id"), r.PathValue("mid")
	var in moduleInput
	if err := decodeBody(r, &in); err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if in.DeviceID == "" {
		in.DeviceID = did
	}
	if in.ModuleID == "" {
		in.ModuleID = mid
	}
	if in.DeviceID != did || in.ModuleID != mid {
		WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("deviceId/moduleId %q/%q in the body do not match %q/%q in the URL", in.DeviceID, in.ModuleID, did, mid))
		return
	}
	m := registry.Module{DeviceID: did, ModuleID: mid, Authentication: in.Authentication.toRegistry(), ManagedBy: in.ManagedBy}
	var err error
	etag, conditional := ifMatch(r)
	if conditional {
		m, err = h.reg.ReplaceModule(r.Context(), m, etag)
	} else {
		m, err = h.reg.CreateModule(r.Context(), m)
	}
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if conditional {
		h.identityChanged(did, mid)
	}
	setETag(w, m.ETag)
	WriteJSON(w, http.StatusOK, m)
}

func (h *Handler) deleteModule(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	etag, _ := ifMatch(r)
	if err := h.reg.DeleteModule(r.Context(), r.PathValue("id"), r.PathValue("mid"), etag); err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	h.identityChanged(r.PathValue("id"), r.PathValue("mid"))
	w.WriteHeader(http.StatusNoContent)
}

// RegistryStatistics is the body of GET /statistics/devices.
type RegistryStatistics struct {
	TotalDeviceCount    int `json:"totalDeviceCount"`
	EnabledDeviceCount  int `json:"enabledDeviceCount"`
	DisabledDeviceCount int `json:"disabledDeviceCount"`
}

func (h *Handler) deviceStatistics(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	total, enabled, err := h.reg.CountDevices(r.Context())
	if err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	WriteJSON(w, http.StatusOK, RegistryStatistics{total, enabled, total - enabled})
}

// MaxBulkDevices is the most devices one bulk request may carry.
const MaxBulkDevices = 100

// bulkDevice is one entry of POST /devices: a device with "id" instead of
// "deviceId", plus importMode and an optional eTag.
type bulkDevice struct {
	deviceInput
	ID         string `json:"id"`
	ETag       string `json:"eTag"`
	ImportMode string `json:"importMode"`
}

// DeviceRegistryOperationError is one failed entry of a bulk request.
type DeviceRegistryOperationError struct {
	DeviceID    string    `json:"deviceId"`
	ErrorCode   ErrorCode `json:"errorCode"`
	ErrorStatus string    `json:"errorStatus"`
}

// BulkRegistryOperationResult is the body of a POST /devices response.
type BulkRegistryOperationResult struct {
	IsSuccessful bool                           `json:"isSuccessful"`
	Errors       []DeviceRegistryOperationError `json:"errors"`
	Warnings     []DeviceRegistryOperationError `json:"warnings"`
}

// bulkDevices applies up to 100 create/update/delete operations. The
// request is rejected as a whole (400) if it is malformed; otherwise each
// entry succeeds or fails on its own and the result lists the failures
// (200, isSuccessful false).
func (h *Handler) bulkDevices(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	var in []bulkDevice
	if err := decodeBody(r, &in); err != nil {
		h.WriteRegistryError(w, r, err)
		return
	}
	if len(in) == 0 {
		WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, "a bulk request needs at least one device")
		return
	}
	if len(in) > MaxBulkDevices {
		WriteError(w, http.StatusRequestEntityTooLarge, CodeTooManyDevices, fmt.Sprintf("a bulk request carries at most %d devices, got %d", MaxBulkDevices, len(in)))
		return
	}
	seen := make(map[string]bool, len(in))
	for i, e := range in {
		id := e.ID
		if id == "" {
			id = e.DeviceID
		}
		if id == "" {
			WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("entry %d has no id", i))
			return
		}
		if seen[id] {
			WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("device %q appears more than once", id))
			return
		}
		seen[id] = true
		switch strings.ToLower(e.ImportMode) {
		case "create", "update", "updateifmatchetag", "delete", "deleteifmatchetag", "createorupdate", "createorupdateifmatchetag":
		default:
			WriteError(w, http.StatusBadRequest, CodeArgumentInvalid, fmt.Sprintf("entry %d has unknown importMode %q", i, e.ImportMode))
			return
		}
	}
	res := BulkRegistryOperationResult{Errors: []DeviceRegistryOperationError{}, Warnings: []DeviceRegistryOperationError{}}
	for _, e := range in {
		if e.ID != "" {
			e.DeviceID = e.ID
		}
		err := h.bulkOne(r, e)
		if err != nil {
			status, code := StatusFor(err)
			if status == http.StatusInternalServerError || errors.Is(err, pebbleutil.ErrNoSpace) {
				// Not the entry's fault: the whole request fails (the
				// entries before it stay applied, as with a 500).
				h.WriteRegistryError(w, r, err)
				return
			}
			res.Errors = append(res.Errors, DeviceRegistryOperationError{DeviceID: e.DeviceID, ErrorCode: code, ErrorStatus: err.Error()})
			continue
		}
		if !strings.EqualFold(e.ImportMode, "create") {
			h.identityChanged(e.DeviceID, "")
		}
	}
	res.IsSuccessful = len(res.Errors) == 0
	WriteJSON(w, http.StatusOK, res)
}

func (h *Handler) bulkOne(r *http.Request, e bulkDevice) error {
	ctx := r.Context()
	d := e.toRegistry()
	switch strings.ToLower(e.ImportMode) {
	case "create":
		_, err := h.reg.CreateDevice(ctx, d)
		return err
	case "update":
		_, err := h.reg.ReplaceDevice(ctx, d, "*")
		return err
	case "updateifmatchetag":
		_, err := h.reg.ReplaceDevice(ctx, d, nonEmptyETag(e.ETag))
		return err
	case "delete":
		return h.reg.DeleteDevice(ctx, d.DeviceID, "*")
	case "deleteifmatchetag":
		return h.reg.DeleteDevice(ctx, d.DeviceID, nonEmptyETag(e.ETag))
	case "createorupdate", "createorupdateifmatchetag":
		etag := "*"
		if strings.EqualFold(e.ImportMode, "createOrUpdateIfMatchETag") {
			etag = nonEmptyETag(e.ETag)
		}
		_, err := h.reg.ReplaceDevice(ctx, d, etag)
		if errors.Is(err, registry.ErrDeviceNotFound) {
			_, err = h.reg.CreateDevice(ctx, d)
		}
		return err
	}
	return fmt.Errorf("%w: unknown importMode %q", registry.ErrInvalidArgument, e.ImportMode)
}

// nonEmptyETag makes a missing eTag on an "...IfMatchETag" entry fail the
// precondition instead of silently matching everything: "\x00" never
// equals an etag.
func nonEmptyETag(etag string) string {
	if etag == "" {
		return "\x00"
	}
	return etag
}
