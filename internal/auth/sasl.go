package auth

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// SASLUser is a parsed SASL PLAIN user name. It says what identity the
// password (a SAS token) must prove.
type SASLUser struct {
	Kind       Kind
	PolicyName string // KindPolicy
	DeviceID   string // KindDevice, KindModule
	ModuleID   string // KindModule
	// HubName is the part after "sas." / "sas.root." (or after '@' in the
	// legacy form); usually the hub name, sometimes the full host name.
	HubName string
}

// ParseSASLPlainUser parses the SASL PLAIN user names IoT Hub accepts:
//
//	{policy}@sas.root.{hub}
//	{deviceId}@sas.{hub}
//	{deviceId}/modules/{moduleId}@sas.{hub}
//	{deviceId}@{hub}, {deviceId}/modules/{moduleId}@{hub}   (legacy)
//
// The keywords "sas", "root" and "modules" are case-insensitive; ids and
// the policy name are URL-decoded (percent escapes only: '+' is a legal id
// character and stays '+'). The last '@' separates the domain, since ids
// may contain '@'.
func ParseSASLPlainUser(user string) (SASLUser, error) {
	at := strings.LastIndexByte(user, '@')
	if at <= 0 || at == len(user)-1 {
		return SASLUser{}, fmt.Errorf("SASL user name %q: want {id}@sas.{hub} or {policy}@sas.root.{hub}", user)
	}
	local, domain := user[:at], user[at+1:]
	var u SASLUser
	root := false
	switch {
	case hasPrefixFold(domain, "sas.root."):
		root = true
		u.HubName = domain[len("sas.root."):]
	case hasPrefixFold(domain, "sas."):
		u.HubName = domain[len("sas."):]
	default:
		u.HubName = domain
	}
	if u.HubName == "" {
		return SASLUser{}, fmt.Errorf("SASL user name %q: hub name is empty", user)
	}
	if root {
		name, err := url.PathUnescape(local)
		if err != nil || name == "" {
			return SASLUser{}, fmt.Errorf("SASL user name %q: bad policy name", user)
		}
		u.Kind, u.PolicyName = KindPolicy, name
		return u, nil
	}
	dev, mod := local, ""
	if i := indexFold(local, "/modules/"); i >= 0 {
		dev, mod = local[:i], local[i+len("/modules/"):]
		if mod == "" {
			return SASLUser{}, fmt.Errorf("SASL user name %q: module id is empty", user)
		}
	}
	var err error
	if u.DeviceID, err = url.PathUnescape(dev); err != nil || u.DeviceID == "" {
		return SASLUser{}, fmt.Errorf("SASL user name %q: bad device id", user)
	}
	u.Kind = KindDevice
	if mod != "" {
		if u.ModuleID, err = url.PathUnescape(mod); err != nil {
			return SASLUser{}, fmt.Errorf("SASL user name %q: bad module id", user)
		}
		u.Kind = KindModule
	}
	return u, nil
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func indexFold(s, sub string) int {
	return strings.Index(strings.ToLower(s), sub)
}

// AuthenticateSASLPlain authenticates a SASL PLAIN login: password is a SAS
// token, and the identity it proves must be the one the user name claims
// (the same policy for root logins; the same device or module otherwise).
// The hub name in the user name must be this hub's name or host name.
func (a *Authority) AuthenticateSASLPlain(ctx context.Context, user, password string, now time.Time) (Identity, error) {
	u, err := ParseSASLPlainUser(user)
	if err != nil {
		return Identity{}, &Error{Reason: err.Error(), malformed: true}
	}
	if !strings.EqualFold(u.HubName, a.hubName) && !hostIn(u.HubName, a.hosts) {
		return Identity{}, deny("SASL user name names hub %q, this is %q", u.HubName, a.hubName)
	}
	id, err := a.Authenticate(ctx, password, now)
	if err != nil {
		return Identity{}, err
	}
	switch u.Kind {
	case KindPolicy:
		if id.Kind != KindPolicy || !strings.EqualFold(id.PolicyName, u.PolicyName) {
			return Identity{}, deny("SASL user is policy %q but the token is for %s %q", u.PolicyName, id.Kind, nameOf(id))
		}
	case KindDevice:
		if id.Kind != KindDevice || id.DeviceID != u.DeviceID {
			return Identity{}, deny("SASL user is device %q but the token is for %s %q", u.DeviceID, id.Kind, nameOf(id))
		}
	case KindModule:
		if id.Kind != KindModule || id.DeviceID != u.DeviceID || id.ModuleID != u.ModuleID {
			return Identity{}, deny("SASL user is module %q/%q but the token is for %s %q", u.DeviceID, u.ModuleID, id.Kind, nameOf(id))
		}
	}
	return id, nil
}

func nameOf(id Identity) string {
	if id.Kind == KindPolicy {
		return id.PolicyName
	}
	return describe(id)
}
