// Package eventhub serves the built-in Event-Hub-compatible endpoint:
// $management, partition readers with filters, epochs and consumer groups.
package eventhub

import "amqphub/internal/hub"

// Config configures the endpoint.
type Config struct{}

// Setup builds the Event-Hub-compatible endpoint.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	return &hub.Module{}, nil
}
