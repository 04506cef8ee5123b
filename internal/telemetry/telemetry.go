// Package telemetry serves device-to-cloud telemetry: the device events
// links into the partition log, and the redirect of service reads on
// /messages/events to the Event-Hub-compatible endpoint.
package telemetry

import "amqphub/internal/hub"

// Config configures telemetry ingest.
type Config struct{}

// Setup builds the telemetry feature.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	return &hub.Module{}, nil
}
