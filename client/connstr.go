package client

import (
	"encoding/base64"
	"fmt"
	"time"

	"amqphub/internal/sas"
)

// ServiceConnection is a parsed service connection string.
type ServiceConnection struct {
	HostName            string
	SharedAccessKeyName string
	SharedAccessKey     string
}

// DeviceConnection is a parsed device (or module) connection string.
type DeviceConnection struct {
	HostName              string
	DeviceID              string
	ModuleID              string
	SharedAccessKey       string
	SharedAccessSignature string
	GatewayHostName       string
}

// ParseServiceConnectionString parses
// HostName=...;SharedAccessKeyName=...;SharedAccessKey=... .
func ParseServiceConnectionString(s string) (ServiceConnection, error) {
	cs, err := sas.ParseIoTHubConnectionString(s)
	if err != nil {
		return ServiceConnection{}, err
	}
	if cs.SharedAccessKeyName == "" || cs.SharedAccessKey == "" || cs.DeviceID != "" {
		return ServiceConnection{}, fmt.Errorf("client: a service connection string needs HostName, SharedAccessKeyName and SharedAccessKey (and no DeviceId)")
	}
	return ServiceConnection{HostName: cs.HostName, SharedAccessKeyName: cs.SharedAccessKeyName, SharedAccessKey: cs.SharedAccessKey}, nil
}

// ParseDeviceConnectionString parses
// HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=... (or
// SharedAccessSignature=...).
func ParseDeviceConnectionString(s string) (DeviceConnection, error) {
	cs, err := sas.ParseIoTHubConnectionString(s)
	if err != nil {
		return DeviceConnection{}, err
	}
	if cs.DeviceID == "" {
		return DeviceConnection{}, fmt.Errorf("client: a device connection string needs DeviceId")
	}
	if cs.SharedAccessKey == "" && cs.SharedAccessSignature == "" {
		return DeviceConnection{}, fmt.Errorf("client: the device connection string has no SharedAccessKey or SharedAccessSignature")
	}
	return DeviceConnection{
		HostName: cs.HostName, DeviceID: cs.DeviceID, ModuleID: cs.ModuleID,
		SharedAccessKey: cs.SharedAccessKey, SharedAccessSignature: cs.SharedAccessSignature,
		GatewayHostName: cs.GatewayHostName,
	}, nil
}

// String formats the connection string.
func (d DeviceConnection) String() string {
	s := "HostName=" + d.HostName + ";DeviceId=" + d.DeviceID
	if d.ModuleID != "" {
		s += ";ModuleId=" + d.ModuleID
	}
	if d.SharedAccessKey != "" {
		s += ";SharedAccessKey=" + d.SharedAccessKey
	} else {
		s += ";SharedAccessSignature=" + d.SharedAccessSignature
	}
	return s
}

// Resource returns the token audience of the device or module.
func (d DeviceConnection) Resource() string {
	r := d.HostName + "/devices/" + d.DeviceID
	if d.ModuleID != "" {
		r += "/modules/" + d.ModuleID
	}
	return r
}

// SignToken makes a SAS token for resource, signed IoT-Hub-style with the
// base64-decoded key; keyName is the policy name ("" for device keys).
func SignToken(resource string, key []byte, keyName string, expiry time.Time) string {
	return sas.Sign(resource, key, keyName, expiry)
}

// Token makes a SAS token for the device or module identity.
func (d DeviceConnection) Token(ttl time.Duration) (string, error) {
	if d.SharedAccessKey == "" {
		return d.SharedAccessSignature, nil
	}
	k, err := base64.StdEncoding.DecodeString(d.SharedAccessKey)
	if err != nil {
		return "", fmt.Errorf("client: SharedAccessKey is not base64: %w", err)
	}
	return SignToken(d.Resource(), k, "", time.Now().Add(ttl)), nil
}

// Token makes a hub-scoped SAS token for the policy.
func (s ServiceConnection) Token(ttl time.Duration) (string, error) {
	k, err := base64.StdEncoding.DecodeString(s.SharedAccessKey)
	if err != nil {
		return "", fmt.Errorf("client: SharedAccessKey is not base64: %w", err)
	}
	return SignToken(s.HostName, k, s.SharedAccessKeyName, time.Now().Add(ttl)), nil
}
