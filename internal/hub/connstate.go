package hub

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/internal/auth"
)

// ConnState is the hub's state for one AMQP connection: the identities it
// proved (SASL and CBS tokens) and which links each one authorized.
type ConnState struct {
	hub  *Hub
	conn *amqp.Conn

	mu     sync.Mutex
	creds  map[string]*credential
	links  map[*amqp.Link]*credential
	cbs    []*amqp.Link // $cbs reply links (hub sends)
	closed bool
	values map[string]any
}

// credential is one proven identity; renewing a token updates it in place
// so the links it authorized stay attached.
type credential struct {
	key   string
	id    auth.Identity
	sasl  bool
	timer *time.Timer
	token string // the raw token, for revalidation (revalidate.go); never logged
}

func (c *credential) identity() auth.Identity { return c.id }

func newConnState(h *Hub, c *amqp.Conn) *ConnState {
	return &ConnState{hub: h, conn: c, creds: map[string]*credential{}, links: map[*amqp.Link]*credential{}}
}

// Conn returns the AMQP connection.
func (cs *ConnState) Conn() *amqp.Conn { return cs.conn }

// Set stores endpoint state on the connection under key.
func (cs *ConnState) Set(key string, v any) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.values == nil {
		cs.values = map[string]any{}
	}
	cs.values[key] = v
}

// Get returns what Set stored.
func (cs *ConnState) Get(key string) any {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.values[key]
}

// credKey identifies "the same identity" across renewals, whatever the
// SDK's encoding of the audience.
func credKey(id auth.Identity) string {
	return fmt.Sprintf("%d|%s|%s|%s|%s", id.Kind, strings.ToLower(id.PolicyName), id.DeviceID, id.ModuleID, strings.ToLower(strings.TrimSuffix(id.Path, "/")))
}

// addCredential records a proven identity, replacing (renewing) an earlier
// one for the same identity, and arms its expiry. token is the raw token,
// kept for revalidation.
func (cs *ConnState) addCredential(id auth.Identity, sasl bool, token string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return
	}
	key := credKey(id)
	c := cs.creds[key]
	if c == nil {
		c = &credential{key: key, sasl: sasl}
		cs.creds[key] = c
		cs.hub.presence.change(id, 1)
	} else {
		cs.hub.presence.change(id, 0) // a renewal is activity
	}
	c.id = id
	c.token = token
	if c.timer != nil {
		c.timer.Stop()
	}
	if !id.Expiry.IsZero() {
		d := id.Expiry.Sub(cs.hub.cfg.Now()) + cs.hub.cfg.TokenGrace
		c.timer = time.AfterFunc(max(d, 0), func() { cs.expire(c) })
	}
}

// expire detaches the links of a credential whose token ran out, unless it
// was renewed meanwhile.
func (cs *ConnState) expire(c *credential) {
	cs.mu.Lock()
	if cs.closed || cs.creds[c.key] != c || cs.hub.cfg.Now().Before(c.id.Expiry.Add(cs.hub.cfg.TokenGrace)) {
		cs.mu.Unlock()
		return
	}
	delete(cs.creds, c.key)
	cs.hub.presence.change(c.id, -1)
	var victims []*amqp.Link
	for l, lc := range cs.links {
		if lc == c {
			victims = append(victims, l)
			delete(cs.links, l)
		}
	}
	cs.mu.Unlock()
	cs.hub.log.Info("hub: token expired; detaching its links", "identity", describe(c.id), "links", len(victims))
	for _, l := range victims {
		l.Close(amqp.NewError(amqp.ErrCondUnauthorizedAccess, "the token that authorized this link expired"))
	}
}

// authorize finds a live credential that permits r.
func (cs *ConnState) authorize(r Route) (*credential, *amqp.Error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	now := cs.hub.cfg.Now()
	reason := "no token was presented on this connection (SASL PLAIN or CBS put-token)"
	for _, c := range cs.creds {
		if !c.id.Expiry.IsZero() && !now.Before(c.id.Expiry) {
			reason = "the token expired"
			continue
		}
		ok, why := permits(c.id, r)
		if ok {
			return c, nil
		}
		reason = why
	}
	return nil, amqp.NewError(amqp.ErrCondUnauthorizedAccess, reason)
}

// bind remembers which credential authorized l, and forgets it on detach.
func (cs *ConnState) bind(l *amqp.Link, c *credential) {
	cs.mu.Lock()
	if cs.closed {
		cs.mu.Unlock()
		return
	}
	cs.links[l] = c
	cs.mu.Unlock()
	// A callback, not a goroutine parked on l.Done(): that cost 8 KiB of
	// stack per device link.
	l.OnGone(func() {
		cs.mu.Lock()
		delete(cs.links, l)
		cs.mu.Unlock()
	})
}

// Identities returns the identities currently proven on the connection.
func (cs *ConnState) Identities() []auth.Identity {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]auth.Identity, 0, len(cs.creds))
	for _, c := range cs.creds {
		out = append(out, c.id)
	}
	return out
}

func (cs *ConnState) close() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for _, c := range cs.creds {
		if c.timer != nil {
			c.timer.Stop()
		}
		cs.hub.presence.change(c.id, -1)
	}
	cs.creds = nil
	cs.links = nil
}

func describe(id auth.Identity) string {
	switch id.Kind {
	case auth.KindPolicy:
		return "policy " + id.PolicyName
	case auth.KindModule:
		return "module " + id.DeviceID + "/" + id.ModuleID
	}
	return "device " + id.DeviceID
}
