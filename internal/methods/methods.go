// Package methods serves direct methods: REST invocations routed to the
// device's methods link and its replies.
package methods

import "amqphub/internal/hub"

// Config configures direct methods.
type Config struct{}

// Setup builds the direct-methods feature.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	return &hub.Module{}, nil
}
