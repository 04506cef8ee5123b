// Package twin serves device and module twins over AMQP and REST.
package twin

import "amqphub/internal/hub"

// Config configures twins.
type Config struct{}

// Setup builds the twin feature.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	return &hub.Module{}, nil
}
