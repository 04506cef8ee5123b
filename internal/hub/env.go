package hub

import (
	"log/slog"

	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
	"amqphub/store/partlog"
)

// Env is what a feature package (telemetry, eventhub, c2d, twin, methods)
// gets from the assembled hub when it is set up.
type Env struct {
	HubName      string
	HostName     string
	EventHubName string
	// DataDir is where a feature keeps its own stores (in a subdirectory
	// named after it). With InMemory, stores must not touch the disk except
	// under DataDir, which is then a temporary directory.
	DataDir  string
	InMemory bool
	// AMQPSPort and AMQPPort are the bound ports of the AMQPS and plain
	// listeners (0 when off), for redirects and printed endpoints.
	AMQPSPort int
	AMQPPort  int

	Hub       *Hub
	Authority *auth.Authority
	Registry  registry.Store
	// REST is the service REST handler; features add routes with REST.Handle.
	REST *rest.Handler
	// Log is the telemetry partition log (shared by ingest and readers).
	Log    partlog.Log
	Logger *slog.Logger
	// Cluster is nil in the embedded single-node mode; when set, features
	// store in JetStream and coordinate across nodes through it.
	Cluster *Cluster
}

// Module is a set-up feature.
type Module struct {
	// Endpoints serve the feature's address kinds.
	Endpoints map[Kind]Endpoint
	// Close releases the feature's resources (stores, goroutines); nil if
	// there is nothing to release. Called after the engine stopped.
	Close func() error
}

// SetEndpoint installs the endpoint for kind. Call it before the hub
// serves connections.
func (h *Hub) SetEndpoint(kind Kind, ep Endpoint) { h.cfg.Endpoints[kind] = ep }
