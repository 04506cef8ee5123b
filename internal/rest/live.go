package rest

import (
	"context"
	"time"

	"amqphub/internal/registry"
)

// LiveFields point at the fields of a device or module document that the
// registry does not store because they change all the time: IoT Hub's
// connection state, last activity and C2D queue depth.
type LiveFields struct {
	ConnectionState            *registry.ConnectionState
	ConnectionStateUpdatedTime *time.Time
	LastActivityTime           *time.Time
	CloudToDeviceMessageCount  *int
}

// LiveSource fills the live fields of a device (moduleID "") or module the
// handler is about to return. It must be quick: it runs on every read.
type LiveSource func(ctx context.Context, deviceID, moduleID string, f LiveFields)

// AddLiveSource registers fn for every device and module the registry
// routes return. Call it while setting up, before the handler serves.
func (h *Handler) AddLiveSource(fn LiveSource) {
	h.liveMu.Lock()
	defer h.liveMu.Unlock()
	h.live = append(h.live, fn)
}

func (h *Handler) liveSources() []LiveSource {
	h.liveMu.Lock()
	defer h.liveMu.Unlock()
	return h.live
}

func (h *Handler) fillDevice(ctx context.Context, d *registry.Device) {
	for _, fn := range h.liveSources() {
		fn(ctx, d.DeviceID, "", LiveFields{&d.ConnectionState, &d.ConnectionStateUpdatedTime, &d.LastActivityTime, &d.CloudToDeviceMessageCount})
	}
}

func (h *Handler) fillModule(ctx context.Context, m *registry.Module) {
	for _, fn := range h.liveSources() {
		fn(ctx, m.DeviceID, m.ModuleID, LiveFields{&m.ConnectionState, &m.ConnectionStateUpdatedTime, &m.LastActivityTime, &m.CloudToDeviceMessageCount})
	}
}
