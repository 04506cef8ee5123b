package twin

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
	"amqphub/store/twins"
)

// RegisterREST adds the service twin routes:
//
//	GET   /twins/{id}[/modules/{mid}]  the twin (ServiceConnect or RegistryRead)
//	PATCH /twins/{id}[/modules/{mid}]  merge tags and desired properties (ServiceConnect)
//	PUT   /twins/{id}[/modules/{mid}]  replace tags and desired properties (ServiceConnect)
//
// IoT Hub grants twin access to ServiceConnect; reads are also open to
// RegistryRead, which IoT Hub lets read twins through queries. PATCH and
// PUT honour If-Match and answer with the updated twin.
func (e *Endpoint) RegisterREST(h *rest.Handler) {
	for _, p := range []string{"/twins/{id}", "/twins/{id}/modules/{mid}"} {
		// Any authenticated caller reaches readTwin, which checks rights
		// itself: the handler's check requires all of a set of rights.
		h.Handle("GET "+p, 0, e.readTwin)
		h.Handle("PATCH "+p, auth.ServiceConnect, func(w http.ResponseWriter, r *http.Request, _ auth.Identity) { e.writeTwin(w, r, false) })
		h.Handle("PUT "+p, auth.ServiceConnect, func(w http.ResponseWriter, r *http.Request, _ auth.Identity) { e.writeTwin(w, r, true) })
	}
}

func routeID(r *http.Request) twins.ID {
	return twins.ID{DeviceID: r.PathValue("id"), ModuleID: r.PathValue("mid")}
}

func (e *Endpoint) readTwin(w http.ResponseWriter, r *http.Request, id auth.Identity) {
	if id.Kind != auth.KindPolicy || !(id.Rights.Has(auth.ServiceConnect) || id.Rights.Has(auth.RegistryRead)) {
		rest.WriteError(w, http.StatusUnauthorized, rest.CodeUnauthorized, "reading twins needs a policy with ServiceConnect or RegistryRead")
		return
	}
	tid := routeID(r)
	owner, err := e.owner(r, tid)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	t, err := e.store.Get(r.Context(), tid, owner.generation)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	writeTwin(w, http.StatusOK, owner, t)
}

func (e *Endpoint) writeTwin(w http.ResponseWriter, r *http.Request, replace bool) {
	tid := routeID(r)
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	u, err := parseUpdate(raw, tid, replace)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	u.IfMatch = r.Header.Get("If-Match")
	owner, err := e.owner(r, tid)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	t, err := e.store.Update(r.Context(), tid, owner.generation, u)
	if err != nil {
		e.writeError(w, r, err)
		return
	}
	writeTwin(w, http.StatusOK, owner, t)
}

// parseUpdate reads a twin document or patch from the service:
// {"tags":{…},"properties":{"desired":{…}}}. Reported properties (which
// the service cannot write) and the service-set fields of a twin read back
// (etag, version, status, …) are ignored, so a twin document can be sent
// back as it was received; "$version" and "$metadata" in desired are
// dropped for the same reason. An id that contradicts the path is an
// error.
func parseUpdate(raw []byte, tid twins.ID, replace bool) (twins.Update, error) {
	doc, err := twins.ParseObject(raw)
	if err != nil {
		return twins.Update{}, fmt.Errorf("twin body: %w", err)
	}
	for _, f := range []struct{ key, want string }{{"deviceId", tid.DeviceID}, {"moduleId", tid.ModuleID}} {
		v, ok := doc[f.key]
		if !ok || v == nil || (f.key == "moduleId" && v == "" && f.want == "") {
			continue
		}
		if s, isStr := v.(string); !isStr || s != f.want {
			return twins.Update{}, fmt.Errorf("%w: %s %v in the body does not match the %q of the request path", twins.ErrInvalidPatch, f.key, v, f.want)
		}
	}
	u := twins.Update{Replace: replace}
	if u.Tags, err = objectField(doc, "tags"); err != nil {
		return twins.Update{}, err
	}
	props, err := objectField(doc, "properties")
	if err != nil {
		return twins.Update{}, err
	}
	desired, err := objectField(props, "desired")
	if err != nil {
		return twins.Update{}, fmt.Errorf("properties: %w", err)
	}
	u.Desired = twins.StripReserved(desired)
	return u, nil
}

// objectField returns m[key] as an object; absent or null gives nil.
func objectField(m map[string]any, key string) (map[string]any, error) {
	v, ok := m[key]
	if !ok || v == nil {
		return nil, nil
	}
	o, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: %q must be a JSON object", twins.ErrInvalidPatch, key)
	}
	return o, nil
}

// identity is what the registry says about a twin's device or module.
type identity struct {
	generation string
	device     *registry.Device
	module     *registry.Module
}

func (e *Endpoint) owner(r *http.Request, tid twins.ID) (identity, error) {
	return e.lookup(r.Context(), tid)
}

func (e *Endpoint) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, twins.ErrPreconditionFailed):
		rest.WriteError(w, http.StatusPreconditionFailed, rest.CodePreconditionFailed, err.Error())
	case errors.Is(err, twins.ErrInvalidPatch), errors.Is(err, twins.ErrInvalidID):
		rest.WriteError(w, http.StatusBadRequest, rest.CodeArgumentInvalid, err.Error())
	case errors.Is(err, twins.ErrTooLarge), errors.As(err, &tooBig):
		rest.WriteError(w, http.StatusRequestEntityTooLarge, rest.CodeMessageTooLarge, err.Error())
	case errors.Is(err, twins.ErrClosed):
		rest.WriteError(w, http.StatusServiceUnavailable, rest.CodeServiceUnavailable, "the hub is shutting down")
	case errors.Is(err, pebbleutil.ErrNoSpace):
		// 503 with Retry-After; the store's guard logged the details.
		rest.WriteError(w, http.StatusServiceUnavailable, rest.CodeServiceUnavailable, rest.NoSpaceMessage)
	default:
		status, code := rest.StatusFor(err)
		if status == http.StatusInternalServerError {
			e.log.Error("twin: REST request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			rest.WriteError(w, status, code, "internal error")
			return
		}
		rest.WriteError(w, status, code, err.Error())
	}
}

// twinJSON is a twin as IoT Hub's REST API shows it (the Twin type of the
// service SDKs): identity fields from the registry, then tags and
// properties with $metadata and $version.
type twinJSON struct {
	DeviceID                  string         `json:"deviceId"`
	ModuleID                  string         `json:"moduleId,omitempty"`
	ETag                      string         `json:"etag"`
	DeviceETag                string         `json:"deviceEtag,omitempty"`
	Status                    string         `json:"status,omitempty"`
	StatusReason              string         `json:"statusReason,omitempty"`
	StatusUpdateTime          *time.Time     `json:"statusUpdateTime,omitempty"`
	ConnectionState           string         `json:"connectionState"`
	LastActivityTime          time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount int            `json:"cloudToDeviceMessageCount"`
	AuthenticationType        string         `json:"authenticationType"`
	X509Thumbprint            thumbprintJSON `json:"x509Thumbprint"`
	ModelID                   string         `json:"modelId"`
	Version                   int64          `json:"version"`
	Tags                      map[string]any `json:"tags"`
	Properties                struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
	} `json:"properties"`
	Capabilities *registry.Capabilities `json:"capabilities,omitempty"`
	DeviceScope  string                 `json:"deviceScope,omitempty"`
	ParentScopes []string               `json:"parentScopes,omitempty"`
}

type thumbprintJSON struct {
	PrimaryThumbprint   *string `json:"primaryThumbprint"`
	SecondaryThumbprint *string `json:"secondaryThumbprint"`
}

func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func renderTwin(owner identity, t twins.Twin) twinJSON {
	out := twinJSON{
		DeviceID: t.ID.DeviceID,
		ModuleID: t.ID.ModuleID,
		ETag:     t.ETag,
		Version:  t.Version,
		Tags:     t.Tags,
	}
	out.Properties.Desired = t.Desired.Document(true)
	out.Properties.Reported = t.Reported.Document(true)
	var a registry.Authentication
	switch {
	case owner.device != nil:
		d := owner.device
		a = d.Authentication
		out.DeviceETag = d.ETag
		out.Status = string(d.Status)
		out.StatusReason = d.StatusReason
		out.StatusUpdateTime = &d.StatusUpdatedTime
		out.ConnectionState = string(d.ConnectionState)
		out.LastActivityTime = d.LastActivityTime
		out.CloudToDeviceMessageCount = d.CloudToDeviceMessageCount
		caps := d.Capabilities
		out.Capabilities = &caps
		out.DeviceScope = d.DeviceScope
		out.ParentScopes = d.ParentScopes
	case owner.module != nil:
		m := owner.module
		a = m.Authentication
		out.DeviceETag = m.ETag
		out.ConnectionState = string(m.ConnectionState)
		out.LastActivityTime = m.LastActivityTime
		out.CloudToDeviceMessageCount = m.CloudToDeviceMessageCount
	}
	if out.ConnectionState == "" {
		out.ConnectionState = string(registry.Disconnected)
	}
	out.AuthenticationType = string(a.Type)
	out.X509Thumbprint = thumbprintJSON{orNull(a.X509Thumbprint.PrimaryThumbprint), orNull(a.X509Thumbprint.SecondaryThumbprint)}
	return out
}

func writeTwin(w http.ResponseWriter, status int, owner identity, t twins.Twin) {
	w.Header().Set("ETag", `"`+t.ETag+`"`)
	rest.WriteJSON(w, status, renderTwin(owner, t))
}
