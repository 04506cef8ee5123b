package hub

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/frames"
	"amqphub/internal/auth"
)

// attachCBS accepts either direction of the $cbs node. Request links need
// no authorization: they are how a connection authenticates.
func (cs *ConnState) attachCBS(l *amqp.Link) *amqp.Error {
	if l.IsSender() {
		// Replies go pre-settled; some clients ask for that explicitly.
		l.SetSenderSettleMode(frames.SenderSettleSettled)
		cs.mu.Lock()
		cs.cbs = append(cs.cbs, l)
		cs.mu.Unlock()
		l.OnDetach(func(*amqp.Error) {
			cs.mu.Lock()
			for i, x := range cs.cbs {
				if x == l {
					cs.cbs = append(cs.cbs[:i], cs.cbs[i+1:]...)
					break
				}
			}
			cs.mu.Unlock()
		})
		return nil
	}
	l.SetMaxMessageSize(64 << 10)
	l.SetCreditWindow(100)
	l.OnMessage(func(d *amqp.Delivery) { cs.onCBSRequest(d) })
	return nil
}

// onCBSRequest handles one put-token request: settle it, authenticate the
// token, record the identity, and reply on the matching $cbs reply link.
func (cs *ConnState) onCBSRequest(d *amqp.Delivery) {
	d.Accept()
	m, err := d.Message()
	if err != nil {
		cs.hub.log.Info("hub: undecodable CBS request", "err", err)
		return
	}
	var msgID any
	replyTo := ""
	if m.Properties != nil {
		msgID, replyTo = m.Properties.MessageID, m.Properties.ReplyTo
	}
	status, desc := cs.putToken(m)
	reply := &frames.Message{
		Properties: &frames.Properties{CorrelationID: msgID},
		ApplicationProperties: map[string]any{
			// status-code must be an AMQP int: Go and C clients reject others.
			"status-code":        int32(status),
			"status-description": desc,
		},
	}
	payload, err := reply.AppendAMQP(nil)
	if err != nil {
		cs.hub.log.Error("hub: encoding CBS reply", "err", err)
		return
	}
	rl := cs.cbsReplyLink(d.Link(), replyTo)
	if rl == nil {
		cs.hub.log.Info("hub: CBS request with no reply link", "reply-to", replyTo)
		return
	}
	out := &amqp.Outgoing{Payload: payload, Settled: true}
	if err := rl.TrySend(out); errors.Is(err, amqp.ErrNoCredit) {
		// The client has not granted credit yet: wait off the reader
		// goroutine, within a bound (cbsreply.go).
		cs.sendCBSReplyLater(rl, out)
	}
}

// putToken validates a put-token request and records its identity.
func (cs *ConnState) putToken(m *frames.Message) (int, string) {
	props := m.ApplicationProperties
	op, _ := props["operation"].(string)
	if !strings.EqualFold(op, "put-token") {
		return http.StatusBadRequest, fmt.Sprintf("unsupported CBS operation %q", op)
	}
	typ, _ := props["type"].(string)
	switch strings.ToLower(typ) {
	case "servicebus.windows.net:sastoken", "azure-devices.net:sastoken":
	case "jwt", "bearer":
		return http.StatusUnauthorized, "Azure AD tokens are not supported; use a SAS token"
	default:
		return http.StatusBadRequest, fmt.Sprintf("unsupported token type %q", typ)
	}
	token, ok := m.Value.(string)
	if !ok {
		return http.StatusBadRequest, "the token must be an amqp-value string"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now := cs.hub.cfg.Now()
	a := cs.hub.cfg.Authority
	id, err := a.Authenticate(ctx, token, now)
	if err != nil && strings.Contains(token, "skn=") {
		// Event Hubs SDKs sign with the key text and name sb:// audiences.
		if ehID, ehErr := a.AuthenticateEventHubs(ctx, token, now); ehErr == nil {
			id, err = ehID, nil
		} else if looksEventHubs(props["name"]) {
			err = ehErr
		}
	}
	if err != nil {
		cs.hub.stats.PutTokenRefused.Add(1)
		cs.hub.log.Info("hub: CBS put-token refused", "audience", props["name"], "reason", err)
		if errors.Is(err, auth.ErrMalformedToken) {
			return http.StatusBadRequest, err.Error()
		}
		return http.StatusUnauthorized, err.Error()
	}
	if name, _ := props["name"].(string); name != "" && !audienceCovers(id.Audience, name) {
		// The token is valid but for another resource than the one the
		// client asks to be authorized for (e.g. another device's token).
		cs.hub.stats.PutTokenRefused.Add(1)
		cs.hub.log.Info("hub: CBS put-token refused", "audience", name, "reason", "token resource does not cover the audience")
		return http.StatusUnauthorized, "the token's resource (sr) does not cover the requested audience"
	}
	cs.addCredential(id, false, token)
	cs.hub.stats.PutTokenOK.Add(1)
	return http.StatusOK, "OK"
}

func looksEventHubs(name any) bool {
	s, _ := name.(string)
	s = strings.ToLower(s)
	return strings.HasPrefix(s, "sb://") || strings.HasPrefix(s, "amqp://") || strings.HasPrefix(s, "amqps://")
}

// cbsReplyLink finds where a CBS reply goes: the $cbs reply link whose
// target address or name is the request's reply-to, else the only $cbs
// reply link in the request's session, else in the connection.
func (cs *ConnState) cbsReplyLink(req *amqp.Link, replyTo string) *amqp.Link {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if replyTo != "" {
		for _, l := range cs.cbs {
			if t := l.PeerAttach().Target; (t != nil && t.Address == replyTo) || l.Name() == replyTo {
				return l
			}
		}
	}
	var inSession, any *amqp.Link
	for _, l := range cs.cbs {
		any = l
		if l.Session() == req.Session() {
			inSession = l
		}
	}
	if inSession != nil {
		return inSession
	}
	return any
}

// audienceCovers reports whether a token for resource (its sr, already
// URL-decoded once by auth) authorizes the CBS audience name. SDKs send the
// name URL-encoded (Node, C#) or raw (C), and '%' is legal in ids, so the
// name is tried decoded and as sent. Any scheme and port are dropped, the
// host is compared without case, trailing slashes ignored. The resource
// must equal the audience or be a path prefix of it (a hub-wide token
// covers a device audience).
func audienceCovers(resource, name string) bool {
	r := normAudience(resource)
	if r == "" {
		return false
	}
	cands := []string{name}
	if d, err := url.QueryUnescape(name); err == nil && d != name {
		cands = append(cands, d)
	}
	for _, c := range cands {
		if n := normAudience(c); n != "" && (n == r || strings.HasPrefix(n, r+"/")) {
			return true
		}
	}
	return false
}

func normAudience(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	host, path, _ := strings.Cut(s, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	path = strings.TrimSuffix(path, "/")
	if path == "" {
		return strings.ToLower(host)
	}
	return strings.ToLower(host) + "/" + strings.ToLower(path)
}
