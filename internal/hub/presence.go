package hub

import (
	"sync"
	"time"

	"amqphub/internal/auth"
)

// Presence is what the hub knows of a device's or module's connections on
// this node: IoT Hub's connectionState, connectionStateUpdatedTime and
// lastActivityTime of the registry's device and module documents.
type Presence struct {
	// Connected reports at least one connection holding a live credential
	// of the identity.
	Connected bool
	// Updated is when Connected last changed.
	Updated time.Time
	// LastActivity is the last time the identity connected, renewed its
	// token or disconnected.
	LastActivity time.Time
}

// presenceKey names a device (module empty) or module.
type presenceKey struct{ device, module string }

// presenceEntry counts an identity's credentials on live connections.
type presenceEntry struct {
	creds int
	Presence
}

// presenceTable tracks every identity that has connected to this node
// since it started (one small entry each, bounded by the registry).
type presenceTable struct {
	now      func() time.Time
	onChange func(deviceID, moduleID string, p Presence)
	mu       sync.Mutex
	m        map[presenceKey]*presenceEntry
}

func newPresenceTable(now func() time.Time, onChange func(deviceID, moduleID string, p Presence)) *presenceTable {
	return &presenceTable{now: now, onChange: onChange, m: map[presenceKey]*presenceEntry{}}
}

func presenceKeyOf(id auth.Identity) (presenceKey, bool) {
	if id.Kind != auth.KindDevice && id.Kind != auth.KindModule {
		return presenceKey{}, false
	}
	return presenceKey{id.DeviceID, id.ModuleID}, true
}

// change counts a credential of id in (delta 1) or out (-1), or notes
// activity (0).
func (t *presenceTable) change(id auth.Identity, delta int) {
	k, ok := presenceKeyOf(id)
	if !ok {
		return
	}
	now := t.now().UTC()
	t.mu.Lock()
	e := t.m[k]
	if e == nil {
		e = &presenceEntry{}
		t.m[k] = e
	}
	e.creds = max(e.creds+delta, 0)
	if connected := e.creds > 0; connected != e.Connected {
		e.Connected = connected
		e.Updated = now
	}
	e.LastActivity = now
	p := e.Presence
	t.mu.Unlock()
	if t.onChange != nil {
		t.onChange(k.device, k.module, p)
	}
}

// get returns the presence of an identity; ok is false for one that never
// connected to this node.
func (t *presenceTable) get(deviceID, moduleID string) (Presence, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[presenceKey{deviceID, moduleID}]
	if e == nil {
		return Presence{}, false
	}
	return e.Presence, true
}

// Presence returns what this node knows of a device's (moduleID "") or
// module's connections; ok is false if it never connected here.
func (h *Hub) Presence(deviceID, moduleID string) (p Presence, ok bool) {
	return h.presence.get(deviceID, moduleID)
}
