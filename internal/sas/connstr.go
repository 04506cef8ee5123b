package sas

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// ErrBadConnectionString is wrapped by every connection-string parse error.
// Errors name the offending key but never echo key or signature values.
var ErrBadConnectionString = errors.New("invalid connection string")

// ParseConnectionStringFields splits "Key=Value;Key=Value" into a map keyed
// by the lower-cased key. Only the first '=' of a pair separates key from
// value (base64 keys end in '='). Empty pairs (a trailing ';') are skipped;
// a pair without '=', an empty key, or a key given twice is an error.
func ParseConnectionStringFields(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: empty", ErrBadConnectionString)
	}
	fields := make(map[string]string)
	for i, pair := range strings.Split(s, ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, fmt.Errorf("%w: element %d has no '='", ErrBadConnectionString, i+1)
		}
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("%w: element %d has an empty key", ErrBadConnectionString, i+1)
		}
		lk := strings.ToLower(k)
		if _, dup := fields[lk]; dup {
			return nil, fmt.Errorf("%w: key %q given twice", ErrBadConnectionString, k)
		}
		fields[lk] = strings.TrimSpace(v)
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w: no key=value pairs", ErrBadConnectionString)
	}
	return fields, nil
}

// IoTHubConnectionString is an IoT Hub device, module or service connection
// string.
type IoTHubConnectionString struct {
	HostName              string
	DeviceID              string
	ModuleID              string
	SharedAccessKeyName   string
	SharedAccessKey       string
	SharedAccessSignature string
	GatewayHostName       string
	// X509 is true for "x509=true" device connection strings (no key).
	X509 bool
}

// ParseIoTHubConnectionString parses and validates an IoT Hub connection
// string. Key names are matched case-insensitively. It requires HostName and
// one credential (SharedAccessKey, SharedAccessSignature or x509=true); a
// SharedAccessKey needs either DeviceId or SharedAccessKeyName and must be
// valid base64; ModuleId needs DeviceId. Unknown keys are ignored.
func ParseIoTHubConnectionString(s string) (IoTHubConnectionString, error) {
	f, err := ParseConnectionStringFields(s)
	if err != nil {
		return IoTHubConnectionString{}, err
	}
	c := IoTHubConnectionString{
		HostName:              f["hostname"],
		DeviceID:              f["deviceid"],
		ModuleID:              f["moduleid"],
		SharedAccessKeyName:   f["sharedaccesskeyname"],
		SharedAccessKey:       f["sharedaccesskey"],
		SharedAccessSignature: f["sharedaccesssignature"],
		GatewayHostName:       f["gatewayhostname"],
	}
	if v, ok := f["x509"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return IoTHubConnectionString{}, fmt.Errorf("%w: x509 must be true or false", ErrBadConnectionString)
		}
		c.X509 = b
	}
	if c.HostName == "" {
		return IoTHubConnectionString{}, fmt.Errorf("%w: HostName is required", ErrBadConnectionString)
	}
	if strings.ContainsAny(c.HostName, "/ ") {
		return IoTHubConnectionString{}, fmt.Errorf("%w: HostName must be a bare host name", ErrBadConnectionString)
	}
	if c.ModuleID != "" && c.DeviceID == "" {
		return IoTHubConnectionString{}, fmt.Errorf("%w: ModuleId requires DeviceId", ErrBadConnectionString)
	}
	creds := 0
	for _, set := range []bool{c.SharedAccessKey != "", c.SharedAccessSignature != "", c.X509} {
		if set {
			creds++
		}
	}
	switch {
	case creds == 0:
		return IoTHubConnectionString{}, fmt.Errorf("%w: one of SharedAccessKey, SharedAccessSignature or x509=true is required", ErrBadConnectionString)
	case creds > 1:
		return IoTHubConnectionString{}, fmt.Errorf("%w: give only one of SharedAccessKey, SharedAccessSignature or x509=true", ErrBadConnectionString)
	}
	if c.SharedAccessKey != "" {
		if c.DeviceID == "" && c.SharedAccessKeyName == "" {
			return IoTHubConnectionString{}, fmt.Errorf("%w: SharedAccessKey requires DeviceId or SharedAccessKeyName", ErrBadConnectionString)
		}
		if _, err := DecodeIoTHubKey(c.SharedAccessKey); err != nil {
			return IoTHubConnectionString{}, fmt.Errorf("%w: SharedAccessKey is not valid base64", ErrBadConnectionString)
		}
	}
	if c.SharedAccessSignature != "" {
		if _, err := Parse(c.SharedAccessSignature); err != nil {
			return IoTHubConnectionString{}, fmt.Errorf("%w: SharedAccessSignature: %w", ErrBadConnectionString, err)
		}
	}
	if c.X509 && c.DeviceID == "" {
		return IoTHubConnectionString{}, fmt.Errorf("%w: x509=true requires DeviceId", ErrBadConnectionString)
	}
	return c, nil
}

// String formats the connection string in the order the Azure portal uses.
func (c IoTHubConnectionString) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("HostName", c.HostName)
	add("DeviceId", c.DeviceID)
	add("ModuleId", c.ModuleID)
	add("SharedAccessKeyName", c.SharedAccessKeyName)
	add("SharedAccessKey", c.SharedAccessKey)
	add("SharedAccessSignature", c.SharedAccessSignature)
	if c.X509 {
		add("x509", "true")
	}
	add("GatewayHostName", c.GatewayHostName)
	return strings.Join(parts, ";")
}

// EventHubsConnectionString is an Event Hubs (or Event-Hub-compatible
// endpoint) connection string.
type EventHubsConnectionString struct {
	// Endpoint is the value as written, e.g. "sb://host:5671/".
	Endpoint string
	// Host is the endpoint's host, including ":port" if one was written.
	Host                   string
	SharedAccessKeyName    string
	SharedAccessKey        string
	SharedAccessSignature  string
	EntityPath             string
	UseDevelopmentEmulator bool
}

// ParseEventHubsConnectionString parses and validates an Event Hubs
// connection string. Endpoint must be an sb://, amqp:// or amqps:// URL with a
// host; UseDevelopmentEmulator is read as Go's strconv.ParseBool does (the
// Go SDK's rule; the JS SDK only honours "true"). A SharedAccessKey requires
// SharedAccessKeyName. The key is used as text and is not base64-checked.
func ParseEventHubsConnectionString(s string) (EventHubsConnectionString, error) {
	f, err := ParseConnectionStringFields(s)
	if err != nil {
		return EventHubsConnectionString{}, err
	}
	c := EventHubsConnectionString{
		Endpoint:              f["endpoint"],
		SharedAccessKeyName:   f["sharedaccesskeyname"],
		SharedAccessKey:       f["sharedaccesskey"],
		SharedAccessSignature: f["sharedaccesssignature"],
		EntityPath:            f["entitypath"],
	}
	if v, ok := f["usedevelopmentemulator"]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return EventHubsConnectionString{}, fmt.Errorf("%w: UseDevelopmentEmulator must be true or false", ErrBadConnectionString)
		}
		c.UseDevelopmentEmulator = b
	}
	if c.Endpoint == "" {
		return EventHubsConnectionString{}, fmt.Errorf("%w: Endpoint is required", ErrBadConnectionString)
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return EventHubsConnectionString{}, fmt.Errorf("%w: Endpoint is not a URL", ErrBadConnectionString)
	}
	switch strings.ToLower(u.Scheme) {
	case "sb", "amqp", "amqps":
	default:
		return EventHubsConnectionString{}, fmt.Errorf("%w: Endpoint scheme must be sb, amqp or amqps, got %q", ErrBadConnectionString, u.Scheme)
	}
	if u.Host == "" {
		return EventHubsConnectionString{}, fmt.Errorf("%w: Endpoint has no host", ErrBadConnectionString)
	}
	c.Host = u.Host
	if c.SharedAccessKey == "" && c.SharedAccessSignature == "" {
		return EventHubsConnectionString{}, fmt.Errorf("%w: SharedAccessKey or SharedAccessSignature is required", ErrBadConnectionString)
	}
	if c.SharedAccessKey != "" && c.SharedAccessSignature != "" {
		return EventHubsConnectionString{}, fmt.Errorf("%w: give only one of SharedAccessKey and SharedAccessSignature", ErrBadConnectionString)
	}
	if c.SharedAccessKey != "" && c.SharedAccessKeyName == "" {
		return EventHubsConnectionString{}, fmt.Errorf("%w: SharedAccessKey requires SharedAccessKeyName", ErrBadConnectionString)
	}
	if c.SharedAccessSignature != "" {
		if _, err := Parse(c.SharedAccessSignature); err != nil {
			return EventHubsConnectionString{}, fmt.Errorf("%w: SharedAccessSignature: %w", ErrBadConnectionString, err)
		}
	}
	return c, nil
}

// String formats the connection string in the canonical order.
func (c EventHubsConnectionString) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("Endpoint", c.Endpoint)
	add("SharedAccessKeyName", c.SharedAccessKeyName)
	add("SharedAccessKey", c.SharedAccessKey)
	add("SharedAccessSignature", c.SharedAccessSignature)
	add("EntityPath", c.EntityPath)
	if c.UseDevelopmentEmulator {
		add("UseDevelopmentEmulator", "true")
	}
	return strings.Join(parts, ";")
}
