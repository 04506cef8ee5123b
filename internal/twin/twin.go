// Package twin serves device and module twins: the device side over AMQP
// (links on /devices/{id}/twin and /devices/{id}/modules/{mid}/twin) and
// the service side over REST (GET, PATCH and PUT on /twins/{id} and
// /twins/{id}/modules/{mid}). Documents live in a store/twins Store.
//
// # Device links
//
// A device opens a pair of links on its twin address: one where it sends
// requests and one where the hub sends responses and desired-property
// notifications. The pair is found by address and direction on the same
// connection, never by the com.microsoft:channel-correlation-id property
// (rhea copies link properties from one link to the next). A request
// carries the message annotations "operation" (GET, PATCH, PUT, DELETE) and
// "resource"; the response echoes its correlation-id (same AMQP type) and
// carries the annotations "status" (int) and, after a reported-properties
// PATCH, "version" (long, the new reported $version):
//
//	GET                                          200, body {"desired":{…,"$version":n},"reported":{…,"$version":m}}
//	PATCH  /properties/reported                  204, version
//	PUT    /notifications/twin/properties/desired 200, subscribes the connection's twin channel
//	DELETE /notifications/twin/properties/desired 200, unsubscribes
//
// While subscribed, every desired-property change (made through REST) is
// pushed on the response link: no correlation-id, annotation "version"
// (long), body the merge patch plus "$version". Responses and pushes of one
// channel go out in order; a GET answered while a change is being pushed
// reflects at least that change. Requests are processed one at a time per
// channel, off the connection's reader goroutine; errors are answered with
// a 4xx/5xx status and a JSON body {"errorCode":…,"message":…}.
//
// # Deleted identities
//
// The registry does not announce deletions, so every twin operation looks
// the device (or module) up in the registry first: a missing identity gives
// 404 (DeviceNotFound / ModuleNotFound) and its stored twin is dropped, and
// the twin is read and written for the identity's current generationId, so
// an identity deleted and created again starts with a new twin (see
// store/twins).
package twin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"amqphub/internal/hub"
	"amqphub/internal/registry"
	"amqphub/store/twins"
	"amqphub/store/twins/jstwins"
)

// Config configures twins.
type Config struct {
	// MaxPendingMessages bounds the responses and notifications queued for
	// one device's twin channel that the device does not take (no credit,
	// no response link). Past it the response link is detached with
	// amqp:resource-limit-exceeded; the device re-attaches and GETs the
	// twin. Default 64.
	MaxPendingMessages int `yaml:"maxPendingMessages"`
	// RequestCredit is the credit window of request links: how many
	// requests a device may have in flight. Default 16.
	RequestCredit uint32 `yaml:"requestCredit"`
}

func (c Config) withDefaults() Config {
	if c.MaxPendingMessages <= 0 {
		c.MaxPendingMessages = 64
	}
	if c.RequestCredit == 0 {
		c.RequestCredit = 16
	}
	return c
}

// maxRequestBytes bounds a twin request message: a reported patch is at
// most 32 KB of JSON, plus room for removals (nulls) and the envelope.
const maxRequestBytes = 128 << 10

// Setup builds the twin feature: the store under env.DataDir/twins (in
// memory with env.InMemory), or the cluster's JetStream bucket when
// env.Cluster is set, the endpoint for hub.KindTwin and the REST
// routes.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	var store twins.Store
	if env.Cluster != nil {
		// Opening loads every twin into the node's cache.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		js, err := jstwins.Open(ctx, env.Cluster.JS, jstwins.Options{
			Bucket: env.Cluster.Bucket("twins"), Replicas: env.Cluster.Replicas, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("twin store: %w", err)
		}
		store = js
	} else {
		pb, err := twins.OpenPebble(filepath.Join(env.DataDir, "twins"), twins.PebbleOptions{InMemory: env.InMemory, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("twin store: %w", err)
		}
		store = pb
	}
	ep := New(store, env.Registry, cfg, log)
	if env.REST != nil {
		ep.RegisterREST(env.REST)
	}
	return &hub.Module{
		Endpoints: map[hub.Kind]hub.Endpoint{hub.KindTwin: ep},
		Close: func() error {
			ep.Close()
			return store.Close()
		},
	}, nil
}

// Endpoint serves twin links and the twin REST routes.
type Endpoint struct {
	store  twins.Store
	reg    registry.Store
	cfg    Config
	log    *slog.Logger
	cancel func()

	mu   sync.Mutex
	subs map[twins.ID]map[*channel]struct{} // channels subscribed to desired changes
}

var _ hub.Endpoint = (*Endpoint)(nil)

// New returns an endpoint on store; it subscribes to the store's desired
// changes until Close. The caller keeps owning store.
func New(store twins.Store, reg registry.Store, cfg Config, log *slog.Logger) *Endpoint {
	if log == nil {
		log = slog.Default()
	}
	e := &Endpoint{store: store, reg: reg, cfg: cfg.withDefaults(), log: log, subs: map[twins.ID]map[*channel]struct{}{}}
	e.cancel = store.SubscribeDesired(e.onDesiredChange)
	return e
}

// Close stops desired-property pushes.
func (e *Endpoint) Close() { e.cancel() }

// Store returns the endpoint's twin store.
func (e *Endpoint) Store() twins.Store { return e.store }

// generation returns the registry generation of the identity owning id.
func (e *Endpoint) generation(ctx context.Context, id twins.ID) (string, error) {
	o, err := e.lookup(ctx, id)
	return o.generation, err
}

// lookup finds the device or module owning id in the registry. A missing
// identity's stored twin is dropped on the way (see the package doc); the
// returned error then wraps the registry's not-found error.
func (e *Endpoint) lookup(ctx context.Context, id twins.ID) (identity, error) {
	var err error
	if id.ModuleID == "" {
		var d registry.Device
		if d, err = e.reg.GetDevice(ctx, id.DeviceID); err == nil {
			return identity{generation: d.GenerationID, device: &d}, nil
		}
	} else {
		var m registry.Module
		if m, err = e.reg.GetModule(ctx, id.DeviceID, id.ModuleID); err == nil {
			return identity{generation: m.GenerationID, module: &m}, nil
		}
	}
	var derr error
	switch {
	case errors.Is(err, registry.ErrDeviceNotFound):
		derr = e.store.DeleteDevice(ctx, id.DeviceID)
	case errors.Is(err, registry.ErrModuleNotFound):
		derr = e.store.Delete(ctx, id)
	default:
		return identity{}, fmt.Errorf("look up %s in the registry: %w", id, err)
	}
	if derr != nil && id.Validate() == nil {
		e.log.Warn("twin: dropping the twin of a deleted identity", "id", id.String(), "err", derr)
	}
	return identity{}, fmt.Errorf("twin %s: %w", id, err)
}

// onDesiredChange queues a desired-property push for every channel of the
// twin that subscribed. It runs on the store writer's goroutine: it only
// queues.
func (e *Endpoint) onDesiredChange(c twins.DesiredChange) {
	e.mu.Lock()
	chans := make([]*channel, 0, len(e.subs[c.ID]))
	for ch := range e.subs[c.ID] {
		chans = append(chans, ch)
	}
	e.mu.Unlock()
	for _, ch := range chans {
		ch.notify(c)
	}
}

func (e *Endpoint) subscribe(ch *channel) {
	e.mu.Lock()
	defer e.mu.Unlock()
	set := e.subs[ch.id]
	if set == nil {
		set = map[*channel]struct{}{}
		e.subs[ch.id] = set
	}
	set[ch] = struct{}{}
}

func (e *Endpoint) unsubscribe(ch *channel) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if set := e.subs[ch.id]; set != nil {
		delete(set, ch)
		if len(set) == 0 {
			delete(e.subs, ch.id)
		}
	}
}
