package registry

import (
	"context"
	"errors"
	"strings"
)

// Errors returned by Store implementations, to be tested with errors.Is.
// Returned errors wrap these with the ids involved.
var (
	ErrDeviceNotFound      = errors.New("device not found")
	ErrDeviceAlreadyExists = errors.New("device already exists")
	ErrModuleNotFound      = errors.New("module not found")
	ErrModuleAlreadyExists = errors.New("module already exists on device")
	// ErrPreconditionFailed means an If-Match etag did not match.
	ErrPreconditionFailed = errors.New("etag precondition failed")
	// ErrInvalidArgument means the caller's input was rejected; the
	// wrapping error says which field and why.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("registry store is closed")
)

// KeyKind selects which SAS key RegenerateDeviceKey and RegenerateModuleKey
// replace.
type KeyKind int

// Key regeneration choices.
const (
	// KeyPrimary replaces the primary key with a new random key.
	KeyPrimary KeyKind = iota + 1
	// KeySecondary replaces the secondary key with a new random key.
	KeySecondary
	// KeySwap exchanges the primary and secondary keys.
	KeySwap
)

// ParseKeyKind reads "primary", "secondary" or "swap" (any case).
func ParseKeyKind(s string) (KeyKind, error) {
	switch strings.ToLower(s) {
	case "primary":
		return KeyPrimary, nil
	case "secondary":
		return KeySecondary, nil
	case "swap":
		return KeySwap, nil
	}
	return 0, errors.New("key kind must be primary, secondary or swap")
}

// AnyETag as an If-Match value makes a write unconditional, like an empty
// one.
const AnyETag = "*"

// Store persists devices and modules. Implementations must be safe for
// concurrent use and must make GetDevice and GetModule cheap, because the
// hub calls them on every connection and token renewal.
//
// ifMatch arguments are etags as the REST API's If-Match header carries
// them: "" or "*" means unconditional; a value with or without surrounding
// double quotes must equal the current etag or the call fails with
// ErrPreconditionFailed.
//
// Create and Replace ignore the service-set fields of their input
// (generationId, etag, timestamps, connection state, message count) and
// return the stored value. Missing SAS keys are generated on Create; on
// Replace they keep their current value, so an update that omits keys
// does not rotate them (use Regenerate*Key for that).
type Store interface {
	CreateDevice(ctx context.Context, d Device) (Device, error)
	GetDevice(ctx context.Context, deviceID string) (Device, error)
	// ListDevices returns up to limit devices (all when limit <= 0) whose
	// ids sort after the id "after" (from the start when empty), in id
	// order.
	ListDevices(ctx context.Context, after string, limit int) ([]Device, error)
	// ReplaceDevice replaces an existing device; it does not create one.
	ReplaceDevice(ctx context.Context, d Device, ifMatch string) (Device, error)
	// DeleteDevice deletes a device and all its modules.
	DeleteDevice(ctx context.Context, deviceID, ifMatch string) error
	RegenerateDeviceKey(ctx context.Context, deviceID string, which KeyKind, ifMatch string) (Device, error)
	// CountDevices returns the total number of devices and how many are
	// enabled.
	CountDevices(ctx context.Context) (total, enabled int, err error)

	// CreateModule fails with ErrDeviceNotFound when the device is missing.
	CreateModule(ctx context.Context, m Module) (Module, error)
	GetModule(ctx context.Context, deviceID, moduleID string) (Module, error)
	// ListModules returns the device's modules in id order; a missing
	// device is ErrDeviceNotFound.
	ListModules(ctx context.Context, deviceID string) ([]Module, error)
	ReplaceModule(ctx context.Context, m Module, ifMatch string) (Module, error)
	DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error
	RegenerateModuleKey(ctx context.Context, deviceID, moduleID string, which KeyKind, ifMatch string) (Module, error)

	// Close releases resources. Calls after Close fail with ErrClosed.
	Close() error
}

// etagMatches implements the If-Match rules shared by every Store.
func etagMatches(ifMatch, current string) bool {
	ifMatch = strings.TrimSpace(ifMatch)
	ifMatch = strings.TrimPrefix(ifMatch, "W/")
	if len(ifMatch) >= 2 && ifMatch[0] == '"' && ifMatch[len(ifMatch)-1] == '"' {
		ifMatch = ifMatch[1 : len(ifMatch)-1]
	}
	return ifMatch == "" || ifMatch == AnyETag || ifMatch == current
}
