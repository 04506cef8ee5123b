// Package hub gives the AMQP engine IoT Hub's semantics: it routes link
// addresses, authenticates connections (SASL PLAIN and CBS put-token),
// authorizes every link against the identities its connection proved,
// detaches links whose token expired, and hands authorized links to the
// endpoint that serves their kind of address (telemetry, C2D, twins,
// methods, the Event-Hub-compatible endpoint).
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"amqphub/amqp"
	"amqphub/internal/auth"
)

// Endpoint serves the links of one kind of address.
type Endpoint interface {
	// Attach accepts the link (setting its callbacks) or refuses it with
	// an AMQP error. It runs on the connection's reader goroutine.
	Attach(req *AttachRequest) *amqp.Error
}

// EndpointFunc adapts a function to Endpoint.
type EndpointFunc func(req *AttachRequest) *amqp.Error

// Attach implements Endpoint.
func (f EndpointFunc) Attach(req *AttachRequest) *amqp.Error { return f(req) }

// AttachRequest is an authorized link on its way to an endpoint.
type AttachRequest struct {
	Link  *amqp.Link
	Route Route
	// Identity is what authorized the link; its token may be renewed later
	// (Conn tracks that), so endpoints read it only at attach time.
	Identity auth.Identity
	Conn     *ConnState
}

// Config configures a Hub.
type Config struct {
	// HostName is the hub's host name (e.g. "localhost").
	HostName string
	// EventHubName is the entity name of the Event-Hub-compatible endpoint.
	EventHubName string
	// Authority authenticates tokens.
	Authority *auth.Authority
	// Endpoints serve each kind of address; kinds without one are refused
	// with amqp:not-implemented.
	Endpoints map[Kind]Endpoint
	// TokenGrace is how long links outlive their token's expiry before they
	// are detached. Default 5 s.
	TokenGrace time.Duration
	// RevalidateInterval is how often live device and module credentials
	// are checked again against the registry (revalidate.go). Default 5 s;
	// negative disables.
	RevalidateInterval time.Duration
	// AuthTimeout closes connections that hold no valid token for that
	// long. Default 60 s; negative disables.
	AuthTimeout time.Duration
	// OnPresence, if set, is called after a device's or module's presence
	// on this node changed (connected, renewed, disconnected), outside the
	// hub's locks; it must not block (a cluster node queues the change for
	// the other nodes).
	OnPresence func(deviceID, moduleID string, p Presence)
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Hub implements amqp.Handler and amqp.Authenticator.
type Hub struct {
	cfg   Config
	log   *slog.Logger
	stats Stats
	reval revalidator
	// presence tracks device and module connections (presence.go).
	presence *presenceTable
}

// Stats are the hub's counters (tests and metrics read them).
type Stats struct {
	ConnectionsOpened atomic.Int64
	ConnectionsOpen   atomic.Int64
	PutTokenOK        atomic.Int64
	PutTokenRefused   atomic.Int64
	LinksAuthorized   atomic.Int64
	LinksRefused      atomic.Int64
}

// Stats returns the hub's live counters.
func (h *Hub) Stats() *Stats { return &h.stats }

// New returns a hub.
func New(cfg Config) (*Hub, error) {
	if cfg.Authority == nil {
		return nil, errors.New("hub: Config.Authority is required")
	}
	if cfg.EventHubName == "" {
		cfg.EventHubName = cfg.Authority.HubName()
	}
	if cfg.HostName == "" {
		cfg.HostName = cfg.Authority.HostName()
	}
	if cfg.TokenGrace == 0 {
		cfg.TokenGrace = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Endpoints == nil {
		cfg.Endpoints = map[Kind]Endpoint{}
	}
	return &Hub{cfg: cfg, log: cfg.Logger, presence: newPresenceTable(cfg.Now, cfg.OnPresence)}, nil
}

// Config returns the hub's configuration.
func (h *Hub) Config() Config { return h.cfg }

// Mechanisms implements amqp.Authenticator. EXTERNAL (X.509) is not
// offered yet.
func (h *Hub) Mechanisms() []string {
	return []string{amqp.MechPLAIN, amqp.MechANONYMOUS, amqp.MechMSSBCBS}
}

// Authenticate implements amqp.Authenticator: PLAIN carries a SAS token as
// password; ANONYMOUS and MSSBCBS authenticate later through CBS.
func (h *Hub) Authenticate(req *amqp.SASLRequest) (any, error) {
	switch req.Mechanism {
	case amqp.MechANONYMOUS, amqp.MechMSSBCBS:
		return nil, nil
	case amqp.MechPLAIN:
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		id, err := h.cfg.Authority.AuthenticateSASLPlain(ctx, req.Username, req.Password, h.cfg.Now())
		if err != nil {
			// The reason names ids and hosts, never the token.
			h.log.Info("hub: SASL PLAIN refused", "user", req.Username, "reason", err)
			return nil, err
		}
		h.rememberSASLToken(&id, req.Password)
		return &id, nil
	}
	return nil, fmt.Errorf("mechanism %s not supported", req.Mechanism)
}

// OnOpen implements amqp.Handler.
func (h *Hub) OnOpen(c *amqp.Conn) *amqp.Error {
	cs := newConnState(h, c)
	if id, ok := c.Identity().(*auth.Identity); ok && id != nil {
		cs.addCredential(*id, true, h.takeSASLToken(id))
	}
	c.SetValue(cs)
	h.track(cs)
	h.stats.ConnectionsOpened.Add(1)
	h.stats.ConnectionsOpen.Add(1)
	return nil
}

// OnClose implements amqp.Handler.
func (h *Hub) OnClose(c *amqp.Conn, err error) {
	if cs, ok := c.Value().(*ConnState); ok {
		cs.close()
		h.untrack(cs)
		h.stats.ConnectionsOpen.Add(-1)
	}
	if id, ok := c.Identity().(*auth.Identity); ok {
		h.takeSASLToken(id) // the handshake may have failed before OnOpen
	}
}

// OnAttach implements amqp.Handler: route, authorize, hand to the endpoint.
func (h *Hub) OnAttach(l *amqp.Link) *amqp.Error {
	cs, ok := l.Conn().Value().(*ConnState)
	if !ok {
		return amqp.NewError(amqp.ErrCondInternalError, "connection state missing")
	}
	r := ParseAddress(l.Address(), h.cfg.EventHubName)
	if r.Kind == KindUnknown {
		return amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("the address %q does not exist on this hub", l.Address()))
	}
	if r.Kind == KindCBS {
		return cs.attachCBS(l)
	}
	cred, aerr := cs.authorize(r)
	if aerr != nil {
		h.stats.LinksRefused.Add(1)
		return aerr
	}
	ep := h.cfg.Endpoints[r.Kind]
	if ep == nil {
		return amqp.NewError(amqp.ErrCondNotImplemented, fmt.Sprintf("%s links are not implemented yet", r.Kind))
	}
	if err := ep.Attach(&AttachRequest{Link: l, Route: r, Identity: cred.identity(), Conn: cs}); err != nil {
		return err
	}
	cs.bind(l, cred)
	h.stats.LinksAuthorized.Add(1)
	return nil
}

// permits decides whether id may open a link to r.
func permits(id auth.Identity, r Route) (bool, string) {
	switch {
	case r.Kind.IsDevice():
		if r.ModuleID != "" {
			if id.Kind == auth.KindModule && id.DeviceID == r.DeviceID && id.ModuleID == r.ModuleID {
				return true, ""
			}
		} else if id.Kind == auth.KindDevice && id.DeviceID == r.DeviceID {
			return true, ""
		}
		if id.Kind == auth.KindPolicy && id.Rights.Has(auth.DeviceConnect) && id.Covers(r.Path) {
			return true, ""
		}
		return false, "the token does not grant access to this device's addresses"
	case r.Kind == KindServiceC2D, r.Kind == KindFeedback, r.Kind == KindFileNotifications, r.Kind == KindEventsRedirect:
		if id.Kind == auth.KindPolicy && id.Rights.Has(auth.ServiceConnect) && id.Covers(r.Path) {
			return true, ""
		}
		return false, "service addresses need a policy with ServiceConnect"
	case r.Kind == KindEHManagement, r.Kind == KindEHPartition, r.Kind == KindEHSend:
		if id.Kind == auth.KindPolicy && id.Rights.Has(auth.ServiceConnect) && coversEntity(id, r) {
			return true, ""
		}
		return false, "the Event-Hub-compatible endpoint needs a policy with ServiceConnect"
	}
	return false, "no rule for this address"
}

// coversEntity accepts Event Hubs tokens for the entity or anything under
// it. Audiences arrive as sb://host/entity/..., which auth reduces to a
// path; a hub-wide token covers everything.
func coversEntity(id auth.Identity, r Route) bool {
	if id.Path == "" || id.Path == "/" {
		return true
	}
	return id.Covers(r.Path) || strings.EqualFold(strings.TrimSuffix(id.Path, "/"), "/"+r.Entity)
}
