// Package auth decides who a SAS token (or SASL PLAIN login) belongs to,
// following IoT Hub's rules: shared access policies with rights, device and
// module keys from the identity registry, and the Event Hubs token
// convention of the built-in Event-Hub-compatible endpoint.
//
// SASL PLAIN and CBS put-token both end in Authority.Authenticate (or
// AuthenticateEventHubs on the Event-Hub-compatible endpoint); the caller
// then checks Identity.Rights, Identity.Kind and Identity.Covers against what
// the connection or link wants to do.
package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"amqphub/internal/registry"
	"amqphub/internal/sas"
)

// ErrUnauthorized is matched (errors.Is) by every authentication failure.
var ErrUnauthorized = errors.New("unauthorized")

// ErrMalformedToken is additionally matched when the token could not be
// parsed at all, so a CBS handler can answer 400 rather than 401.
var ErrMalformedToken = errors.New("malformed token")

// Error is an authentication failure. Reason is meant for logs: it names
// hosts, ids, policies and expiry times, but never a signature or a key.
type Error struct {
	Reason    string
	malformed bool
}

func (e *Error) Error() string { return "unauthorized: " + e.Reason }

// Is makes errors.Is(err, ErrUnauthorized) (and ErrMalformedToken for parse
// failures) true.
func (e *Error) Is(target error) bool {
	return target == ErrUnauthorized || (e.malformed && target == ErrMalformedToken)
}

func deny(format string, args ...any) error {
	return &Error{Reason: fmt.Sprintf(format, args...)}
}

// Kind says what an Identity is.
type Kind int

// Identity kinds.
const (
	// KindPolicy is a shared access policy acting for itself (hub or
	// service scope).
	KindPolicy Kind = iota + 1
	// KindDevice is a device, authenticated by its own key or by a policy
	// with DeviceConnect whose token names the device.
	KindDevice
	// KindModule is a module, like KindDevice.
	KindModule
)

func (k Kind) String() string {
	switch k {
	case KindPolicy:
		return "policy"
	case KindDevice:
		return "device"
	case KindModule:
		return "module"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Identity is the result of a successful authentication.
type Identity struct {
	Kind Kind
	// PolicyName is the policy whose key signed the token (skn); empty for
	// tokens signed with a device or module key.
	PolicyName string
	// Rights are the policy's rights for KindPolicy, and DeviceConnect for
	// devices and modules.
	Rights Rights
	// DeviceID, ModuleID and GenerationID identify the device or module
	// (GenerationID is the registry's, for the auth-generation-id
	// annotation).
	DeviceID     string
	ModuleID     string
	GenerationID string
	// Expiry is the token's expiry; the connection must stop using the
	// identity at that instant unless a new token arrives.
	Expiry time.Time
	// Audience is the token's resource (sr), URL-decoded once.
	Audience string
	// Path is the part of the resource after the host ("" for hub scope,
	// "/devices/d1", "/myhub/ConsumerGroups/$default/Partitions/0", ...),
	// without a trailing slash.
	Path string
}

// Covers reports whether the token's resource authorizes path (a link
// address path such as "/devices/d1/messages/events"): the token's Path must
// be a prefix of it at a segment boundary, compared case-insensitively. A
// hub-scoped token covers everything.
func (id Identity) Covers(path string) bool {
	p := strings.TrimSuffix(path, "/")
	if id.Path == "" {
		return true
	}
	if len(p) < len(id.Path) || !strings.EqualFold(p[:len(id.Path)], id.Path) {
		return false
	}
	return len(p) == len(id.Path) || p[len(id.Path)] == '/'
}

// DeviceLookup is the part of registry.Store the authority reads.
type DeviceLookup interface {
	GetDevice(ctx context.Context, deviceID string) (registry.Device, error)
	GetModule(ctx context.Context, deviceID, moduleID string) (registry.Module, error)
}

// Config configures an Authority.
type Config struct {
	// HostName is the hub's host name as it appears in connection strings
	// and token resources (e.g. "myhub.azure-devices.net" or "localhost").
	HostName string
	// Aliases are further host names tokens may name (e.g. "127.0.0.1"
	// when HostName is "localhost"). Comparisons ignore case and ports.
	Aliases []string
	// EventHubsHostNames are the host names of the Event-Hub-compatible
	// endpoint; HostName and Aliases are always accepted there too.
	EventHubsHostNames []string
	// Policies are the shared access policies; nil means
	// DefaultPolicies(). Names must be unique ignoring case.
	Policies []Policy
	// Registry looks devices and modules up; required.
	Registry DeviceLookup
}

type policyKeys struct {
	Policy
	iot [2][]byte // base64-decoded keys (IoT Hub convention)
	eh  [2][]byte // key text bytes (Event Hubs convention)
}

// Authority authenticates tokens. It is safe for concurrent use.
type Authority struct {
	host     string
	hubName  string
	hosts    []string
	ehHosts  []string
	policies []policyKeys
	reg      DeviceLookup
}

// New validates cfg and returns an Authority.
func New(cfg Config) (*Authority, error) {
	host := stripPort(strings.TrimSpace(cfg.HostName))
	if host == "" {
		return nil, errors.New("auth config: HostName is required")
	}
	if strings.ContainsAny(host, "/ @;") {
		return nil, fmt.Errorf("auth config: HostName %q must be a bare host name", cfg.HostName)
	}
	if cfg.Registry == nil {
		return nil, errors.New("auth config: Registry is required")
	}
	a := &Authority{host: host, reg: cfg.Registry}
	a.hubName, _, _ = strings.Cut(host, ".")
	a.hosts = append(a.hosts, host)
	for _, h := range cfg.Aliases {
		if h = stripPort(strings.TrimSpace(h)); h != "" {
			a.hosts = append(a.hosts, h)
		}
	}
	a.ehHosts = append(a.ehHosts, a.hosts...)
	for _, h := range cfg.EventHubsHostNames {
		if h = stripPort(strings.TrimSpace(h)); h != "" {
			a.ehHosts = append(a.ehHosts, h)
		}
	}
	pols := cfg.Policies
	if pols == nil {
		pols = DefaultPolicies()
	}
	for _, p := range pols {
		if p.Name == "" {
			return nil, errors.New("auth config: a policy has no name")
		}
		if strings.ContainsAny(p.Name, ";&= ") {
			return nil, fmt.Errorf("auth config: policy name %q contains one of ';&= '", p.Name)
		}
		for _, q := range a.policies {
			if strings.EqualFold(q.Name, p.Name) {
				return nil, fmt.Errorf("auth config: policy %q defined twice", p.Name)
			}
		}
		if p.Rights == 0 || p.Rights&^allRights != 0 {
			return nil, fmt.Errorf("auth config: policy %q has invalid rights %d", p.Name, p.Rights)
		}
		pk := policyKeys{Policy: p}
		for i, k := range []string{p.PrimaryKey, p.SecondaryKey} {
			if k == "" {
				if i == 0 {
					return nil, fmt.Errorf("auth config: policy %q has no primary key", p.Name)
				}
				continue
			}
			dk, err := sas.DecodeIoTHubKey(k)
			if err != nil {
				return nil, fmt.Errorf("auth config: policy %q key %d: %w", p.Name, i+1, err)
			}
			pk.iot[i] = dk
			pk.eh[i] = sas.EventHubsKey(k)
		}
		a.policies = append(a.policies, pk)
	}
	return a, nil
}

// HostName returns the hub host name.
func (a *Authority) HostName() string { return a.host }

// HubName returns the hub name: the first DNS label of the host name.
func (a *Authority) HubName() string { return a.hubName }

// Policy returns the named policy (name compared ignoring case).
func (a *Authority) Policy(name string) (Policy, bool) {
	if p := a.policy(name); p != nil {
		return p.Policy, true
	}
	return Policy{}, false
}

func (a *Authority) policy(name string) *policyKeys {
	for i := range a.policies {
		if a.policies[i].Name == name {
			return &a.policies[i]
		}
	}
	for i := range a.policies {
		if strings.EqualFold(a.policies[i].Name, name) {
			return &a.policies[i]
		}
	}
	return nil
}

// stripPort drops a ":port" suffix; bracketed IPv6 literals lose their
// brackets, bare IPv6 literals (several colons) are left alone.
func stripPort(h string) string {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i >= 0 {
			return h[1:i]
		}
		return h
	}
	if strings.Count(h, ":") == 1 {
		h, _, _ = strings.Cut(h, ":")
	}
	return h
}

func hostIn(h string, hosts []string) bool {
	h = stripPort(h)
	for _, x := range hosts {
		if strings.EqualFold(h, x) {
			return true
		}
	}
	return false
}

// splitResource splits a decoded resource into host and path (no trailing
// slash), dropping a "scheme://" prefix.
func splitResource(res string) (scheme, host, path string) {
	if i := strings.Index(res, "://"); i >= 0 {
		scheme, res = res[:i], res[i+3:]
	}
	host, path, _ = strings.Cut(res, "/")
	path = strings.TrimSuffix(path, "/")
	if path != "" {
		path = "/" + path
	}
	return scheme, host, path
}

func parse(token string, now time.Time) (*sas.Token, error) {
	t, err := sas.Parse(token)
	if err != nil {
		return nil, &Error{Reason: err.Error(), malformed: true}
	}
	if t.Expired(now) {
		return nil, deny("token for %q expired at %s", t.Resource, t.Expiry.Format(time.RFC3339))
	}
	return t, nil
}

// target is what a token's path names.
type target struct {
	deviceIDs []string // candidate device ids (see idCandidates)
	moduleIDs []string
	isDevice  bool
	isModule  bool
}

// parsePath recognises /devices/{id} and /devices/{id}/modules/{mid}.
func parsePath(path string) target {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	switch {
	case len(segs) == 2 && strings.EqualFold(segs[0], "devices") && segs[1] != "":
		return target{isDevice: true, deviceIDs: idCandidates(segs[1])}
	case len(segs) == 4 && strings.EqualFold(segs[0], "devices") && segs[1] != "" &&
		strings.EqualFold(segs[2], "modules") && segs[3] != "":
		return target{isModule: true, deviceIDs: idCandidates(segs[1]), moduleIDs: idCandidates(segs[3])}
	}
	return target{}
}

// idCandidates returns the id as it appears in the once-decoded resource,
// and its decoding if it still has escapes: the C# SDK encodes ids before
// encoding the whole resource, while '%' is also a legal id character, so
// both readings are tried (the key check decides; a wrong guess cannot
// authenticate anyone).
func idCandidates(seg string) []string {
	out := []string{seg}
	if strings.Contains(seg, "%") {
		if d, err := url.PathUnescape(seg); err == nil && d != seg {
			out = append(out, d)
		}
	}
	return out
}

// Authenticate authenticates an IoT Hub SAS token (from CBS put-token, SASL
// PLAIN or an HTTP Authorization header). Rules, as IoT Hub applies them:
//
//   - the token must parse and not be expired at now;
//   - the resource's host must be the hub's (case-insensitive, port and an
//     optional scheme ignored; raw or URL-encoded resources both work);
//   - without skn the resource must be {host}/devices/{id} or
//     {host}/devices/{id}/modules/{mid}, and the token must be signed with
//     that device's or module's primary or secondary key;
//   - with skn the token must be signed with that policy's key; if the
//     resource names a device or module, the result is that device or
//     module and the policy must have DeviceConnect; otherwise the result
//     is the policy itself with its rights, scoped to the resource path;
//   - disabled devices (and their modules) and non-SAS devices are refused.
//
// Keys are used base64-decoded, the IoT Hub convention.
func (a *Authority) Authenticate(ctx context.Context, token string, now time.Time) (Identity, error) {
	t, err := parse(token, now)
	if err != nil {
		return Identity{}, err
	}
	_, host, path := splitResource(t.Resource)
	if !hostIn(host, a.hosts) {
		return Identity{}, deny("token resource host %q is not this hub (%s)", host, a.host)
	}
	id := Identity{Expiry: t.Expiry, Audience: t.Resource, Path: path}
	tg := parsePath(path)

	if t.KeyName == "" {
		if !tg.isDevice && !tg.isModule {
			return Identity{}, deny("token without skn must be scoped to /devices/{id} or /devices/{id}/modules/{mid}, got %q", path)
		}
		return a.deviceIdentity(ctx, t, tg, id, nil)
	}

	p := a.policy(t.KeyName)
	if p == nil {
		return Identity{}, deny("unknown shared access policy %q", t.KeyName)
	}
	if !verifyAny(t, p.iot) {
		return Identity{}, deny("signature does not match the keys of policy %q", p.Name)
	}
	id.PolicyName = p.Name
	if tg.isDevice || tg.isModule {
		if !p.Rights.Has(DeviceConnect) {
			return Identity{}, deny("policy %q lacks DeviceConnect, so it cannot act as a device", p.Name)
		}
		return a.deviceIdentity(ctx, t, tg, id, p)
	}
	id.Kind = KindPolicy
	id.Rights = p.Rights
	return id, nil
}

func verifyAny(t *sas.Token, keys [2][]byte) bool {
	for _, k := range keys {
		if k != nil && t.Verify(k) == nil {
			return true
		}
	}
	return false
}

func decodeKeys(sk registry.SymmetricKey) [2][]byte {
	var out [2][]byte
	for i, k := range []string{sk.PrimaryKey, sk.SecondaryKey} {
		if k == "" {
			continue
		}
		if b, err := sas.DecodeIoTHubKey(k); err == nil {
			out[i] = b
		}
	}
	return out
}

// deviceIdentity resolves the device or module the token names. With
// policy == nil the token must be signed with the identity's own key; with
// a policy the signature was already checked.
func (a *Authority) deviceIdentity(ctx context.Context, t *sas.Token, tg target, id Identity, policy *policyKeys) (Identity, error) {
	var dev registry.Device
	var err error
	found := false
	for _, did := range tg.deviceIDs {
		dev, err = a.reg.GetDevice(ctx, did)
		if err == nil {
			found = true
			break
		}
		if !errors.Is(err, registry.ErrDeviceNotFound) {
			return Identity{}, fmt.Errorf("authenticate device %q: %w", did, err)
		}
	}
	if !found {
		return Identity{}, deny("device %q is not registered", tg.deviceIDs[0])
	}

	var keys [2][]byte
	var authType registry.AuthType
	var genID string
	if tg.isModule {
		var mod registry.Module
		found = false
		for _, mid := range tg.moduleIDs {
			mod, err = a.reg.GetModule(ctx, dev.DeviceID, mid)
			if err == nil {
				found = true
				break
			}
			if !errors.Is(err, registry.ErrModuleNotFound) {
				return Identity{}, fmt.Errorf("authenticate module %q/%q: %w", dev.DeviceID, mid, err)
			}
		}
		if !found {
			return Identity{}, deny("module %q is not registered on device %q", tg.moduleIDs[0], dev.DeviceID)
		}
		keys, authType, genID = decodeKeys(mod.Authentication.SymmetricKey), mod.Authentication.Type, mod.GenerationID
		id.Kind, id.ModuleID = KindModule, mod.ModuleID
	} else {
		keys, authType, genID = decodeKeys(dev.Authentication.SymmetricKey), dev.Authentication.Type, dev.GenerationID
		id.Kind = KindDevice
	}
	id.DeviceID = dev.DeviceID
	id.GenerationID = genID
	id.Rights = DeviceConnect

	if policy == nil {
		if authType != registry.AuthSAS {
			return Identity{}, deny("%s %q uses %q authentication, not SAS", id.Kind, describe(id), authType)
		}
		if !verifyAny(t, keys) {
			return Identity{}, deny("signature does not match the keys of %s %q", id.Kind, describe(id))
		}
	}
	// Checked after the signature so that an unauthenticated caller learns
	// nothing about the device's state.
	if dev.Status != registry.StatusEnabled {
		return Identity{}, deny("device %q is disabled", dev.DeviceID)
	}
	return id, nil
}

func describe(id Identity) string {
	if id.Kind == KindModule {
		return id.DeviceID + "/modules/" + id.ModuleID
	}
	return id.DeviceID
}

// AuthenticateEventHubs authenticates a token presented to the built-in
// Event-Hub-compatible endpoint. Such tokens come from Event Hubs SDKs:
// the resource is an absolute URI (sb://host/entity/..., amqps://host:port/...;
// Go lower-cases its escapes), skn names a policy, and the signature uses the
// policy key's TEXT bytes. Tokens signed the IoT Hub way (decoded key) are
// accepted as well, since both are derived from the same secret. The result
// is always KindPolicy; the caller checks Rights (ServiceConnect) and
// Covers(entity path).
func (a *Authority) AuthenticateEventHubs(ctx context.Context, token string, now time.Time) (Identity, error) {
	t, err := parse(token, now)
	if err != nil {
		return Identity{}, err
	}
	scheme, host, path := splitResource(t.Resource)
	switch strings.ToLower(scheme) {
	case "", "sb", "amqp", "amqps", "http", "https":
	default:
		return Identity{}, deny("token resource scheme %q is not sb, amqp or amqps", scheme)
	}
	if !hostIn(host, a.ehHosts) {
		return Identity{}, deny("token resource host %q is not this hub's Event Hubs endpoint", host)
	}
	if t.KeyName == "" {
		return Identity{}, deny("Event Hubs tokens must name a shared access policy (skn)")
	}
	p := a.policy(t.KeyName)
	if p == nil {
		return Identity{}, deny("unknown shared access policy %q", t.KeyName)
	}
	if !verifyAny(t, p.eh) && !verifyAny(t, p.iot) {
		return Identity{}, deny("signature does not match the keys of policy %q", p.Name)
	}
	return Identity{
		Kind:       KindPolicy,
		PolicyName: p.Name,
		Rights:     p.Rights,
		Expiry:     t.Expiry,
		Audience:   t.Resource,
		Path:       path,
	}, nil
}
