// Package registry holds the identity registry: devices and modules with
// their SAS keys, as IoT Hub's service REST API exposes them, and the Store
// that persists them.
//
// The JSON shape of Device and Module is the one IoT Hub's REST API returns
// (field names as in the azure-iothub npm package's Device and Module types
// and the REST reference), so the rest package can serve these values as
// they are.
package registry

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"time"
)

// Status says whether a device may connect.
type Status string

// Device statuses, spelled as the REST API spells them.
const (
	StatusEnabled  Status = "enabled"
	StatusDisabled Status = "disabled"
)

// ConnectionState is the device's last known connection state.
type ConnectionState string

// Connection states, spelled as the REST API spells them.
const (
	Disconnected ConnectionState = "Disconnected"
	Connected    ConnectionState = "Connected"
)

// AuthType is the authentication mechanism of a device or module.
type AuthType string

// Authentication mechanisms. Only AuthSAS can be used to connect to this
// hub today; the others are stored so that registry round trips are exact.
const (
	AuthSAS                  AuthType = "sas"
	AuthSelfSigned           AuthType = "selfSigned"
	AuthCertificateAuthority AuthType = "certificateAuthority"
	AuthNone                 AuthType = "none"
)

// SymmetricKey holds the two base64 SAS keys.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds certificate thumbprints for selfSigned devices.
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint"`
	SecondaryThumbprint string `json:"secondaryThumbprint"`
}

// Authentication is the authentication mechanism of a device or module.
type Authentication struct {
	SymmetricKey   SymmetricKey   `json:"symmetricKey"`
	X509Thumbprint X509Thumbprint `json:"x509Thumbprint"`
	Type           AuthType       `json:"type"`
}

// Capabilities are device capabilities.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Device is a device identity. Fields the service sets (GenerationID, ETag,
// timestamps, connection state, message count) are ignored on input.
type Device struct {
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId"`
	ETag                       string          `json:"etag"`
	ConnectionState            ConnectionState `json:"connectionState"`
	Status                     Status          `json:"status"`
	StatusReason               string          `json:"statusReason,omitempty"`
	ConnectionStateUpdatedTime time.Time       `json:"connectionStateUpdatedTime"`
	StatusUpdatedTime          time.Time       `json:"statusUpdatedTime"`
	LastActivityTime           time.Time       `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication  `json:"authentication"`
	Capabilities               Capabilities    `json:"capabilities"`
	DeviceScope                string          `json:"deviceScope,omitempty"`
	ParentScopes               []string        `json:"parentScopes,omitempty"`
}

// Module is a module identity on a device.
type Module struct {
	ModuleID                   string          `json:"moduleId"`
	DeviceID                   string          `json:"deviceId"`
	GenerationID               string          `json:"generationId"`
	ETag                       string          `json:"etag"`
	ConnectionState            ConnectionState `json:"connectionState"`
	ConnectionStateUpdatedTime time.Time       `json:"connectionStateUpdatedTime"`
	LastActivityTime           time.Time       `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int             `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication  `json:"authentication"`
	ManagedBy                  string          `json:"managedBy,omitempty"`
}

// clone returns a copy that shares no memory with d.
func (d Device) clone() Device {
	if d.ParentScopes != nil {
		d.ParentScopes = append([]string(nil), d.ParentScopes...)
	}
	return d
}

// Limits from IoT Hub's identity registry rules.
const (
	MaxIDLength           = 128
	MaxStatusReasonLength = 128
	// MinKeyBytes and MaxKeyBytes bound the decoded length of SAS keys.
	MinKeyBytes = 16
	MaxKeyBytes = 64
	// generatedKeyBytes is the size of keys this registry generates.
	generatedKeyBytes = 32
)

// ValidateID checks a device or module id: 1 to 128 ASCII characters from
// letters, digits and - . + % _ # * ? ! ( ) , : = @ $ '.
func ValidateID(kind, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidArgument, kind)
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("%w: %s is %d characters, the limit is %d", ErrInvalidArgument, kind, len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return fmt.Errorf("%w: %s contains the character %q, allowed are letters, digits and -.+%%_#*?!(),:=@$'", ErrInvalidArgument, kind, id[i])
		}
	}
	return nil
}

func idChar(c byte) bool {
	if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
		return true
	}
	return strings.IndexByte("-.+%_#*?!(),:=@$'", c) >= 0
}

// NewKey returns a fresh random SAS key (32 bytes, standard base64).
func NewKey() (string, error) {
	var b [generatedKeyBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

func validateKey(which, k string) error {
	b, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return fmt.Errorf("%w: %s is not valid base64", ErrInvalidArgument, which)
	}
	if len(b) < MinKeyBytes || len(b) > MaxKeyBytes {
		return fmt.Errorf("%w: %s decodes to %d bytes, it must be %d to %d", ErrInvalidArgument, which, len(b), MinKeyBytes, MaxKeyBytes)
	}
	return nil
}

// normalizeAuth validates a, fills missing SAS keys from keep (the keys a
// replaced identity had, so an update that omits keys does not rotate
// them) or else with generated ones, and canonicalises the type's spelling.
func normalizeAuth(a Authentication, keep *Authentication) (Authentication, error) {
	switch strings.ToLower(string(a.Type)) {
	case "", "sas":
		a.Type = AuthSAS
	case "selfsigned":
		a.Type = AuthSelfSigned
	case "certificateauthority":
		a.Type = AuthCertificateAuthority
	case "none":
		a.Type = AuthNone
	default:
		return a, fmt.Errorf("%w: authentication type %q is not one of sas, selfSigned, certificateAuthority, none", ErrInvalidArgument, a.Type)
	}
	if a.Type != AuthSAS {
		if a.SymmetricKey.PrimaryKey != "" || a.SymmetricKey.SecondaryKey != "" {
			return a, fmt.Errorf("%w: symmetric keys are only allowed with authentication type sas", ErrInvalidArgument)
		}
	}
	if a.Type != AuthSelfSigned {
		if a.X509Thumbprint.PrimaryThumbprint != "" || a.X509Thumbprint.SecondaryThumbprint != "" {
			return a, fmt.Errorf("%w: x509 thumbprints are only allowed with authentication type selfSigned", ErrInvalidArgument)
		}
	}
	switch a.Type {
	case AuthSAS:
		for _, k := range []struct {
			name string
			val  *string
		}{{"primaryKey", &a.SymmetricKey.PrimaryKey}, {"secondaryKey", &a.SymmetricKey.SecondaryKey}} {
			if *k.val == "" && keep != nil && keep.Type == AuthSAS {
				if k.name == "primaryKey" {
					*k.val = keep.SymmetricKey.PrimaryKey
				} else {
					*k.val = keep.SymmetricKey.SecondaryKey
				}
			}
			if *k.val == "" {
				nk, err := NewKey()
				if err != nil {
					return a, err
				}
				*k.val = nk
				continue
			}
			if err := validateKey(k.name, *k.val); err != nil {
				return a, err
			}
		}
	case AuthSelfSigned:
		if a.X509Thumbprint.PrimaryThumbprint == "" {
			return a, fmt.Errorf("%w: selfSigned authentication needs a primaryThumbprint", ErrInvalidArgument)
		}
		for _, tp := range []string{a.X509Thumbprint.PrimaryThumbprint, a.X509Thumbprint.SecondaryThumbprint} {
			if !isHex(tp) {
				return a, fmt.Errorf("%w: x509 thumbprints must be hexadecimal", ErrInvalidArgument)
			}
		}
	}
	return a, nil
}

func isHex(s string) bool {
	if len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func normalizeStatus(s Status) (Status, error) {
	switch strings.ToLower(string(s)) {
	case "", "enabled":
		return StatusEnabled, nil
	case "disabled":
		return StatusDisabled, nil
	}
	return "", fmt.Errorf("%w: status %q is not enabled or disabled", ErrInvalidArgument, s)
}

// prepareDevice validates the caller-settable fields of d and returns d with
// them canonicalised and keys filled where missing (see normalizeAuth; keep
// is the replaced device's authentication, nil on create). Service-set
// fields are left for the store to fill.
func prepareDevice(d Device, keep *Authentication) (Device, error) {
	if err := ValidateID("deviceId", d.DeviceID); err != nil {
		return d, err
	}
	st, err := normalizeStatus(d.Status)
	if err != nil {
		return d, err
	}
	d.Status = st
	if len(d.StatusReason) > MaxStatusReasonLength {
		return d, fmt.Errorf("%w: statusReason is longer than %d characters", ErrInvalidArgument, MaxStatusReasonLength)
	}
	if len(d.DeviceScope) > 1024 || len(d.ParentScopes) > 10 {
		return d, fmt.Errorf("%w: deviceScope or parentScopes too long", ErrInvalidArgument)
	}
	a, err := normalizeAuth(d.Authentication, keep)
	if err != nil {
		return d, err
	}
	d.Authentication = a
	return d.clone(), nil
}

func prepareReplacement(d, cur Device) (Device, error) {
	d, err := prepareDevice(d, &cur.Authentication)
	if err != nil {
		return Device{}, err
	}
	d.GenerationID = cur.GenerationID
	d.ConnectionState = cur.ConnectionState
	d.ConnectionStateUpdatedTime = cur.ConnectionStateUpdatedTime
	d.LastActivityTime = cur.LastActivityTime
	d.CloudToDeviceMessageCount = cur.CloudToDeviceMessageCount
	d.StatusUpdatedTime = cur.StatusUpdatedTime
	if d.Status != cur.Status {
		d.StatusUpdatedTime = time.Now().UTC()
	}
	return d, nil
}

func prepareModuleReplacement(m, cur Module) (Module, error) {
	m, err := prepareModule(m, &cur.Authentication)
	if err != nil {
		return Module{}, err
	}
	m.GenerationID = cur.GenerationID
	m.ConnectionState = cur.ConnectionState
	m.ConnectionStateUpdatedTime = cur.ConnectionStateUpdatedTime
	m.LastActivityTime = cur.LastActivityTime
	m.CloudToDeviceMessageCount = cur.CloudToDeviceMessageCount
	return m, nil
}

func prepareModule(m Module, keep *Authentication) (Module, error) {
	if err := ValidateID("deviceId", m.DeviceID); err != nil {
		return m, err
	}
	if err := ValidateID("moduleId", m.ModuleID); err != nil {
		return m, err
	}
	if len(m.ManagedBy) > MaxIDLength {
		return m, fmt.Errorf("%w: managedBy is longer than %d characters", ErrInvalidArgument, MaxIDLength)
	}
	a, err := normalizeAuth(m.Authentication, keep)
	if err != nil {
		return m, err
	}
	m.Authentication = a
	return m, nil
}
