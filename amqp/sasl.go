package amqp

import (
	"bytes"
	"crypto/tls"
	"fmt"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
)

// SASL mechanism names.
const (
	MechPLAIN     = "PLAIN"
	MechANONYMOUS = "ANONYMOUS"
	MechMSSBCBS   = "MSSBCBS"
	MechEXTERNAL  = "EXTERNAL"
)

// SASLRequest is what a client presented during SASL.
type SASLRequest struct {
	Mechanism string
	// For PLAIN: authorization id, user name and password.
	AuthzID, Username, Password string
	// InitialResponse is the raw initial response (ANONYMOUS carries trace
	// text; MSSBCBS carries nothing).
	InitialResponse []byte
	// Hostname is the sasl-init hostname, if sent.
	Hostname string
	// TLS is the connection's TLS state (EXTERNAL reads the client
	// certificate from it); nil on plain TCP.
	TLS *tls.ConnectionState
}

// Authenticator decides SASL exchanges for the server.
type Authenticator interface {
	// Mechanisms lists the offered mechanisms in order of preference.
	Mechanisms() []string
	// Authenticate returns an identity (any value the hub wants to see
	// again through Conn.Identity) or an error, which fails SASL with
	// outcome code auth. It must not log secrets.
	Authenticate(req *SASLRequest) (identity any, err error)
}

// AnonymousAuthenticator accepts ANONYMOUS and MSSBCBS (which behaves as
// ANONYMOUS: the client authenticates later through CBS).
type AnonymousAuthenticator struct{}

// Mechanisms implements Authenticator.
func (AnonymousAuthenticator) Mechanisms() []string { return []string{MechANONYMOUS, MechMSSBCBS} }

// Authenticate implements Authenticator.
func (AnonymousAuthenticator) Authenticate(req *SASLRequest) (any, error) {
	switch req.Mechanism {
	case MechANONYMOUS, MechMSSBCBS:
		return nil, nil
	}
	return nil, fmt.Errorf("mechanism %s not offered", req.Mechanism)
}

// parsePlain splits a PLAIN response: authzid NUL authcid NUL password.
func parsePlain(b []byte) (authz, user, pass string, err error) {
	parts := bytes.SplitN(b, []byte{0}, 3)
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("malformed PLAIN response")
	}
	return string(parts[0]), string(parts[1]), string(parts[2]), nil
}

// negotiateSASL runs the server side of SASL after the SASL protocol header
// was exchanged. It returns the identity the authenticator produced.
func (c *Conn) negotiateSASL() error {
	auth := c.srv.cfg.SASL
	if auth == nil {
		auth = AnonymousAuthenticator{}
	}
	offered := auth.Mechanisms()
	mechs := make([]encoding.Symbol, len(offered))
	for i, m := range offered {
		mechs[i] = encoding.Symbol(m)
	}
	if err := c.writeNow(frames.FrameSASL, 0, &frames.SASLMechanisms{Mechanisms: mechs}); err != nil {
		return err
	}
	p, err := c.readFrame(frames.FrameSASL)
	if err != nil {
		return fmt.Errorf("reading sasl-init: %w", err)
	}
	init, ok := p.(*frames.SASLInit)
	if !ok {
		return fmt.Errorf("expected sasl-init, got %T", p)
	}
	req := &SASLRequest{
		Mechanism:       string(init.Mechanism),
		InitialResponse: append([]byte(nil), init.InitialResponse...),
		Hostname:        init.Hostname,
		TLS:             tlsState(c.nc),
	}
	outcome := frames.SASLOutcome{Result: frames.SASLAuth}
	known := false
	for _, m := range offered {
		if m == req.Mechanism {
			known = true
		}
	}
	var authErr error
	if !known {
		authErr = fmt.Errorf("mechanism %q not offered", req.Mechanism)
	} else {
		if req.Mechanism == MechPLAIN {
			req.AuthzID, req.Username, req.Password, authErr = parsePlain(init.InitialResponse)
		}
		if authErr == nil {
			var id any
			id, authErr = auth.Authenticate(req)
			if authErr == nil {
				outcome.Result = frames.SASLOK
				c.identity = id
				c.saslMech = req.Mechanism
			}
		}
	}
	if err := c.writeNow(frames.FrameSASL, 0, &outcome); err != nil {
		return err
	}
	if authErr != nil {
		return fmt.Errorf("sasl %s: %w", req.Mechanism, errSASLFailed{authErr})
	}
	return nil
}

// errSASLFailed marks an authentication failure (logged at info, not error).
type errSASLFailed struct{ error }

func (e errSASLFailed) Unwrap() error { return e.error }
