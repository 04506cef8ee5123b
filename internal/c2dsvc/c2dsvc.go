// Package c2dsvc serves cloud-to-device messaging: the service's
// /messages/devicebound sender, the devices' receivers, feedback and file
// notifications, on the durable queues of store/c2d.
package c2dsvc

import "amqphub/internal/hub"

// Config configures C2D messaging.
type Config struct{}

// Setup builds the C2D feature.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	return &hub.Module{}, nil
}
