// Package telemetry serves device-to-cloud telemetry: the device events
// links into the partition log, and the redirect of service reads on
// /messages/events to the Event-Hub-compatible endpoint.
//
// # Ingest
//
// A device (or module) attaches a sender to /devices/{id}/messages/events
// (or /devices/{id}/modules/{mid}/messages/events); the hub has already
// authenticated and authorized it. Each message, or each message of a
// batch (format 0x80013700), is validated, stamped with the annotations
// IoT Hub stamps (see the Ann* keys) and appended to partition
// Partition(deviceID, Log.Partitions()) of the log. The delivery is
// settled accepted only once every record it carried is durable; a log
// failure rejects it with amqp:internal-error, which the SDKs retry. A
// malformed message is rejected with amqp:decode-error and nothing of it
// is stored. Messages larger than Config.MaxMessageSize make the engine
// detach the link with amqp:link:message-size-exceeded.
//
// # Redirect
//
// A service attaching a receiver to /messages/events/ConsumerGroups/{cg}/Partitions/{p}
// or /messages/events/$management on the hub gets an attach followed at
// once by a detach with amqp:link:redirect pointing at the
// Event-Hub-compatible endpoint (see RedirectAddress), as IoT Hub does;
// go-amqp reports it from the first Receive. The reader itself lives in
// package eventhub.
//
// # Stored record
//
// A log record is one complete encoded AMQP message:
//
//	[header] message-annotations [properties] [application-properties] body... [footer]
//
// The header, properties, application-properties, body sections and footer
// are the bytes the device sent, copied unchanged; the delivery-annotations
// section is dropped; the message-annotations section holds the hub's
// annotations followed by the device's own, minus any key a device may not
// set (iothub-connection-*, iothub-enqueuedtime, iothub-message-source).
// StampAnnotations builds such a record; the Event-Hub-compatible reader
// sends what AppendEventHubAnnotations makes of it.
//
// # Concurrency
//
// Message callbacks run on the connection's reader goroutine, so a link's
// scratch buffers need no lock. Completions run on the log's committer
// goroutines and only settle deliveries (which the engine allows from any
// goroutine). No goroutine is started per message or per link. When a
// partition's queue is full, Log.AppendAsync blocks the connection's
// reader: that, with link credit, is the back-pressure towards devices.
//
// # Not done
//
// Ingest does not update the device's lastActivityTime: the registry has
// no cheap way to record it (ReplaceDevice ignores service-set fields).
package telemetry

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"amqphub/internal/hub"
)

// Limits of Config.MaxMessageSize.
const (
	DefaultMaxMessageSize = 256 << 10
	// MinMaxMessageSize leaves the C SDK, which keeps 1 KiB of the
	// advertised size in reserve for batching, room for a message.
	MinMaxMessageSize = 4 << 10
	// MaxMaxMessageSize keeps stamped records well under the log's
	// payload limit.
	MaxMaxMessageSize = 1 << 20
)

// Config configures telemetry ingest.
type Config struct {
	// MaxMessageSize is the largest message (or batch) a device may send,
	// advertised as the link's max-message-size. Default 256 KiB, IoT
	// Hub's limit; range 4 KiB to 1 MiB.
	MaxMessageSize uint64 `yaml:"maxMessageSize"`
	// CreditWindow is how many unsettled messages one device link may
	// have in flight. Default: the engine's (1000).
	CreditWindow uint32 `yaml:"creditWindow"`
	// Throttle limits telemetry per device and per connection; off by
	// default (see ThrottleConfig).
	Throttle ThrottleConfig `yaml:"throttle"`
}

// Setup builds the telemetry feature: endpoints for hub.KindDeviceEvents
// (ingest) and hub.KindEventsRedirect (the redirect).
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	if env == nil || env.Log == nil {
		return nil, errors.New("telemetry: the environment has no partition log")
	}
	if cfg.MaxMessageSize == 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.MaxMessageSize < MinMaxMessageSize || cfg.MaxMessageSize > MaxMaxMessageSize {
		return nil, fmt.Errorf("telemetry: maxMessageSize %d out of range %d..%d", cfg.MaxMessageSize, MinMaxMessageSize, MaxMaxMessageSize)
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.Default()
	}
	th, err := newThrottle(cfg.Throttle, time.Now)
	if err != nil {
		return nil, err
	}
	in := &ingest{
		log:      env.Log,
		reg:      env.Registry,
		logger:   logger,
		maxSize:  cfg.MaxMessageSize,
		credit:   cfg.CreditWindow,
		now:      time.Now,
		throttle: th,
	}
	rd := &redirect{env: env}
	return &hub.Module{Endpoints: map[hub.Kind]hub.Endpoint{
		hub.KindDeviceEvents:   in,
		hub.KindEventsRedirect: rd,
	}}, nil
}

// Partition returns the partition of a device's telemetry: the 32-bit
// FNV-1a hash of the device id's UTF-8 bytes, modulo partitions. A module's
// messages go to its device's partition. The hash is part of the stored
// data's layout: changing it would split a device's history across
// partitions, so it must never change.
func Partition(deviceID string, partitions int) int {
	if partitions <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(deviceID); i++ {
		h ^= uint32(deviceID[i])
		h *= 16777619
	}
	return int(h % uint32(partitions))
}
