package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/internal/auth"
)

// Revalidation: registry changes reach live connections.
//
// A token is checked when it is presented (SASL PLAIN or CBS put-token),
// but the registry can change afterwards: a device is disabled or deleted,
// or its keys are regenerated. So every RevalidateInterval the hub checks
// each live device and module credential again, exactly as if its token
// were presented anew (signature against the current keys, device status,
// generation), except for expiry, which the per-credential timers handle.
// A credential that no longer passes is dropped: its links are detached
// with amqp:unauthorized-access, and the connection is closed with the same
// condition when that credential was its SASL identity or its last one.
// RevalidateDevice runs the check at once for one device, for the REST
// layer to call after a device update or delete (until it does, changes
// take effect within one interval).
//
// Connections that hold no credential at all for AuthTimeout (they never
// presented a token, or all of theirs expired or were revoked) are closed,
// so unauthenticated connections cannot pile up.
//
// Lock order: revalidator.mu is never held while taking ConnState.mu;
// ConnState.mu is never held across the registry lookup or a Close.

// Revalidation defaults.
const (
	DefaultRevalidateInterval = 5 * time.Second
	DefaultAuthTimeout        = 60 * time.Second
)

// revalidator tracks the hub's live connections.
type revalidator struct {
	mu      sync.Mutex
	conns   map[*ConnState]*tracked
	running bool // the loop goroutine is alive
	// sasl holds a SASL PLAIN token from Authenticate until OnOpen files
	// it with the connection's credential (keyed by the identity pointer
	// the engine keeps as the connection's identity).
	sasl sync.Map
}

type tracked struct {
	// bare is when the connection was last seen holding no credential
	// (zero while it holds one).
	bare time.Time
}

func (h *Hub) revalidateInterval() time.Duration {
	if h.cfg.RevalidateInterval == 0 {
		return DefaultRevalidateInterval
	}
	return h.cfg.RevalidateInterval
}

func (h *Hub) authTimeout() time.Duration {
	if h.cfg.AuthTimeout == 0 {
		return DefaultAuthTimeout
	}
	return h.cfg.AuthTimeout
}

// tick is how often the loop wakes: the revalidation interval, or a
// fraction of the auth timeout if that is shorter or revalidation is off.
func (h *Hub) tick() time.Duration {
	d := h.revalidateInterval()
	if at := h.authTimeout(); at > 0 && (d <= 0 || at/4 < d) {
		d = max(at/4, 10*time.Millisecond)
	}
	return d
}

// rememberSASLToken keeps a SASL PLAIN token for the connection that is
// being authenticated with identity id.
func (h *Hub) rememberSASLToken(id *auth.Identity, token string) {
	h.reval.sasl.Store(id, token)
}

// takeSASLToken returns and forgets the token kept for id.
func (h *Hub) takeSASLToken(id *auth.Identity) string {
	v, _ := h.reval.sasl.LoadAndDelete(id)
	s, _ := v.(string)
	return s
}

// track starts revalidating cs; the loop runs while connections exist
// (the immediate checks find cs even when the loop is off).
func (h *Hub) track(cs *ConnState) {
	r := &h.reval
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		r.conns = make(map[*ConnState]*tracked)
	}
	r.conns[cs] = &tracked{}
	if !r.running && h.tick() > 0 {
		r.running = true
		go h.revalidateLoop()
	}
}

func (h *Hub) untrack(cs *ConnState) {
	r := &h.reval
	r.mu.Lock()
	delete(r.conns, cs)
	r.mu.Unlock()
}

// snapshot returns the tracked connections; with stop, it ends the loop
// (under the lock, so track cannot miss the exit) when there are none.
func (h *Hub) snapshot(stop bool) map[*ConnState]*tracked {
	r := &h.reval
	r.mu.Lock()
	defer r.mu.Unlock()
	if stop && len(r.conns) == 0 {
		r.running = false
		return nil
	}
	out := make(map[*ConnState]*tracked, len(r.conns))
	for cs, t := range r.conns {
		out[cs] = t
	}
	return out
}

func (h *Hub) revalidateLoop() {
	t := time.NewTicker(h.tick())
	defer t.Stop()
	lastCheck := time.Now()
	for range t.C {
		conns := h.snapshot(true)
		if conns == nil {
			return
		}
		check := h.revalidateInterval() > 0 && time.Since(lastCheck) >= h.revalidateInterval()-h.tick()/2
		if check {
			lastCheck = time.Now()
		}
		for cs, tr := range conns {
			if check {
				h.revalidateConn(cs, "", "")
			}
			h.checkBare(cs, tr)
		}
	}
}

// Revalidate checks every live device and module credential now, and
// returns when done.
func (h *Hub) Revalidate() {
	for cs := range h.snapshot(false) {
		h.revalidateConn(cs, "", "")
	}
}

// RevalidateDevice checks now the live credentials of deviceID (and of its
// modules) against the registry and drops those that no longer verify:
// call it after a device is disabled, deleted or given new keys. It
// returns when the checks are done (links and connections are closing).
func (h *Hub) RevalidateDevice(deviceID string) {
	for cs := range h.snapshot(false) {
		h.revalidateConn(cs, deviceID, "")
	}
}

// RevalidateModule is RevalidateDevice for one module.
func (h *Hub) RevalidateModule(deviceID, moduleID string) {
	for cs := range h.snapshot(false) {
		h.revalidateConn(cs, deviceID, moduleID)
	}
}

// checkBare closes a connection that has held no credential for longer
// than the auth timeout.
func (h *Hub) checkBare(cs *ConnState, tr *tracked) {
	limit := h.authTimeout()
	if limit <= 0 {
		return
	}
	cs.mu.Lock()
	bare := !cs.closed && len(cs.creds) == 0
	cs.mu.Unlock()
	now := time.Now()
	h.reval.mu.Lock()
	switch {
	case !bare:
		tr.bare = time.Time{}
	case tr.bare.IsZero():
		tr.bare = now
	}
	since := tr.bare
	h.reval.mu.Unlock()
	if bare && now.Sub(since) >= limit {
		h.log.Info("hub: closing a connection that presented no valid token", "remote", cs.conn.RemoteAddr().String(), "after", limit)
		cs.conn.Close(amqp.NewError(amqp.ErrCondUnauthorizedAccess,
			fmt.Sprintf("no valid token was presented within %s (SASL PLAIN or CBS put-token)", limit)))
	}
}

// recheck is one credential to verify again.
type recheck struct {
	c     *credential
	id    auth.Identity
	token string
}

// revalidateConn re-verifies the device and module credentials of cs
// (only those of deviceID/moduleID when given).
func (h *Hub) revalidateConn(cs *ConnState, deviceID, moduleID string) {
	cs.mu.Lock()
	if cs.closed {
		cs.mu.Unlock()
		return
	}
	var checks []recheck
	for _, c := range cs.creds {
		if c.id.Kind != auth.KindDevice && c.id.Kind != auth.KindModule {
			// Policies come from the configuration, which does not
			// change while the hub runs.
			continue
		}
		if deviceID != "" && c.id.DeviceID != deviceID || moduleID != "" && c.id.ModuleID != moduleID {
			continue
		}
		if c.token == "" {
			continue // no token to check again (cannot happen for devices)
		}
		checks = append(checks, recheck{c: c, id: c.id, token: c.token})
	}
	cs.mu.Unlock()
	for _, rc := range checks {
		if reason := h.stillValid(rc); reason != "" {
			h.revoke(cs, rc, reason)
		}
	}
}

// stillValid authenticates the credential's token again and returns why
// it no longer holds ("" if it does, or if the registry could not answer).
func (h *Hub) stillValid(rc recheck) string {
	// Expiry is the timers' business: check as of an instant at which
	// the token was still in date.
	at := h.cfg.Now()
	if !rc.id.Expiry.IsZero() && !at.Before(rc.id.Expiry) {
		at = rc.id.Expiry.Add(-time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nid, err := h.cfg.Authority.Authenticate(ctx, rc.token, at)
	if err != nil {
		if errors.Is(err, auth.ErrUnauthorized) {
			return err.Error()
		}
		// A registry failure says nothing about the device: keep the
		// links and try again next round.
		h.log.Warn("hub: revalidating a credential failed; will retry", "identity", describe(rc.id), "err", err)
		return ""
	}
	if nid.Kind != rc.id.Kind || nid.DeviceID != rc.id.DeviceID || nid.ModuleID != rc.id.ModuleID {
		return "the token now resolves to another identity"
	}
	if nid.GenerationID != rc.id.GenerationID {
		// Deleted and created again under the same id (and keys): a new
		// device, which the old connection never authenticated as.
		return fmt.Sprintf("%s was deleted and created again", describe(rc.id))
	}
	return ""
}

// revoke drops a credential that no longer verifies, detaches its links,
// and closes the connection if that leaves it without its identity.
func (h *Hub) revoke(cs *ConnState, rc recheck, reason string) {
	cs.mu.Lock()
	c := rc.c
	if cs.closed || cs.creds[c.key] != c || c.token != rc.token || c.id != rc.id {
		// Gone, or renewed since it was read: the next round checks
		// the new token.
		cs.mu.Unlock()
		return
	}
	delete(cs.creds, c.key)
	cs.hub.presence.change(c.id, -1)
	if c.timer != nil {
		c.timer.Stop()
	}
	var victims []*amqp.Link
	for l, lc := range cs.links {
		if lc == c {
			victims = append(victims, l)
			delete(cs.links, l)
		}
	}
	closeConn := c.sasl || len(cs.creds) == 0
	cs.mu.Unlock()
	h.log.Info("hub: credential no longer valid; detaching its links", "identity", describe(rc.id), "links", len(victims), "closeConnection", closeConn, "reason", reason)
	desc := "the credential that authorized this link is no longer valid: " + reason
	for _, l := range victims {
		l.Close(amqp.NewError(amqp.ErrCondUnauthorizedAccess, desc))
	}
	if closeConn {
		cs.conn.Close(amqp.NewError(amqp.ErrCondUnauthorizedAccess, "the connection's credential is no longer valid: "+reason))
	}
}
