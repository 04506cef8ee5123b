// Package c2dsvc serves cloud-to-device messaging: the service's
// /messages/devicebound sender, the devices' receivers, feedback and file
// notifications, on the durable queues of store/c2d.
//
// # Service sends (service.go)
//
// A service attaches a sender to /messages/devicebound and sends messages
// whose `to` property names the device, /devices/{id}/messages/devicebound,
// or a module, /devices/{id}/modules/{mid}/messages/devicebound (ids may be
// percent-encoded, literal segments match in any case). The application
// property iothub-ack (none, positive, negative, full) asks for feedback.
// The message-id may be any AMQP message-id type; feedback carries its text
// (a string as is, a uuid in its 8-4-4-4-12 form, a ulong in decimal,
// binary in hex). absolute-expiry-time (or, without it, the header's ttl)
// sets the expiry, clamped to MaxTTL; without either the message lives
// DefaultTTL. A message is accepted only once it is durable; the reader
// goroutine never waits for the disk: each delivery is handed to a goroutine
// chained behind the previous delivery of the same link for the same queue,
// so a link's messages to one device are enqueued in the order sent while
// different devices share group commits. Refusals are the rejected outcome
// with:
//
//	amqp:not-found                    unknown or disabled device or module
//	amqp:resource-limit-exceeded      MaxQueueDepth messages already pending
//	amqp:link:message-size-exceeded   the encoded message exceeds MaxMessageBytes
//	com.microsoft:argument-error      missing or malformed to, bad iothub-ack,
//	                                  unsupported message format, oversized ids
//	amqp:decode-error                 a message that does not decode
//	amqp:internal-error               the store failed (the SDKs retry)
//
// # Delivery to devices (device.go)
//
// A device (or module) attaches a receiver to its devicebound address; one
// goroutine per link waits for credit, locks the oldest available message
// and sends it unsettled (pre-settled, and completed at once, only if the
// device asked for snd-settle-mode settled) with the 16-byte lock token as
// delivery tag and these message annotations added to the service's message:
//
//	iothub-enqueuedtime    timestamp  when the hub accepted the message
//	iothub-deliverycount   ubyte      abandons so far (0 on the first delivery)
//	x-opt-sequence-number  ulong      the store's sequence number
//	x-opt-lock-token       string     the delivery tag as the C# SDK's GUID
//
// Outcomes: accepted completes (feedback Success), rejected dead-letters
// (Rejected), released abandons (the delivery count grows; at
// MaxDeliveryCount DeliveryCountExceeded). modified with undeliverable-here
// rejects, modified with delivery-failed abandons, and modified with neither
// gives the message back without counting a delivery, which is what those
// flags mean in AMQP. rcv-settle-mode second (the C# SDK's) is honoured by
// the engine, which confirms the device's outcome as soon as it arrives;
// the store applies it just after. So a settlement whose lock already
// expired (or whose message was purged) cannot be answered with
// com.microsoft:message-lock-lost: it is ignored, and the message was or
// will be delivered again.
//
// A message larger than the max-message-size the device's link announced
// counts a delivery and detaches the link with
// amqp:link:message-size-exceeded, so that after MaxDeliveryCount attempts
// it is dead-lettered instead of blocking the queue.
//
// A lock lasts LockDuration. When it expires the message is delivered again,
// without counting a delivery (IoT Hub's rule). When the link a message was
// sent on goes away before the device settles it, its lock is given back
// (without counting a delivery, in sequence order) as soon as another link
// of the same queue is attached in this process: at once if one is, or
// when the next one attaches, before it locks anything. A reconnecting
// device thus gets its messages, in order, without waiting for the locks to
// expire. Otherwise the lock simply expires, as in IoT Hub; in particular
// locks survive a restart of the hub (the list of such locks is in memory
// only), a graceful one as well as a crash.
//
// # Feedback (feedback.go)
//
// A service attaches a receiver to /messages/serviceBound/feedback. Each of
// its deliveries is one batch of up to FeedbackBatchSize records: content
// type application/vnd.microsoft.iothub.feedback.json, user-id the hub name,
// annotation iothub-enqueuedtime (timestamp), a JSON array in one data
// section, the batch's 16-byte lock token as delivery tag. A batch goes out
// as soon as FeedbackBatchSize records are available, otherwise once
// FeedbackInterval has passed since the link's previous batch (IoT Hub
// waits up to 15 s; the default here is 1 s). accepted or rejected deletes
// the records, released or modified (or losing the link) makes them
// available again; an unsettled batch becomes available again when its lock
// expires. /messages/serviceBound/filenotifications attaches and stays
// empty: there is no file upload.
//
// # Purge (rest.go)
//
// DELETE /devices/{id}/commands (ServiceConnect) dead-letters every pending
// message of the device with Purged feedback and answers 200
// {"totalMessagesPurged": n, "deviceId": id}; an unknown device is 404
// DeviceNotFound. IoT Hub has no purge for module queues.
//
// # Deleted devices (reconcile.go)
//
// The registry does not notify features of deletions, so the hub finds them
// itself. Every queued message and feedback record carries the generation
// id the device (or module) had when the message was sent; deleting a device
// and creating it again gives it a new one. The service compares the
// generation ids in the store with the registry at start and every
// ReconcileInterval, and a device link compares each message it locks with
// the generation it attached with: state of a device that no longer exists
// is dropped without feedback (store DeleteQueue), state of an earlier
// generation is dropped while the current generation's is kept (store
// DropGenerations). A send that finds the queue full also drops earlier
// generations before refusing. Until that happens (at most
// ReconcileInterval) feedback of a deleted device can still be delivered.
//
// # Concurrency
//
// Engine callbacks (message, settled) never block: store operations run on
// goroutines. Attaching a device link looks the device up in the registry
// (a cache hit as a rule, bounded by 5 s), as telemetry does. Goroutines:
// one delivery loop per device or feedback link; one short-lived goroutine
// per service delivery (bounded by the link's credit window), per
// settlement (bounded by the queue depth for devices, as only locked
// messages are settled, and by the link credit for feedback) and per batch
// of lost locks to give back. Lock order: Service.mu, serviceLink.mu and
// deviceLink.mu are leaves; none is held across a store call, a registry
// call or an engine call. Close waits for every goroutine; Setup's
// Module.Close then closes the store.
package c2dsvc

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
	"amqphub/store/c2d"
	"amqphub/store/c2d/jsc2d"
)

// Config configures C2D messaging. Zero fields take the defaults below,
// which are IoT Hub's except FeedbackInterval.
type Config struct {
	// MaxQueueDepth bounds each device's pending (enqueued plus locked)
	// messages. Default 50.
	MaxQueueDepth int `yaml:"maxQueueDepth"`
	// MaxDeliveryCount is the number of abandons after which a message is
	// dead-lettered with DeliveryCountExceeded. Default 10.
	MaxDeliveryCount int `yaml:"maxDeliveryCount"`
	// LockDuration is how long a delivered message stays invisible before
	// it is delivered again. Default 60 s.
	LockDuration time.Duration `yaml:"lockDuration"`
	// DefaultTTL is the lifetime of a message without an expiry. Default 1 h.
	DefaultTTL time.Duration `yaml:"defaultTTL"`
	// MaxTTL clamps the expiry a service may ask for. Default 48 h.
	MaxTTL time.Duration `yaml:"maxTTL"`
	// MaxMessageBytes bounds an encoded message from the service. Default
	// 64 KiB.
	MaxMessageBytes int `yaml:"maxMessageBytes"`
	// FeedbackBatchSize is the largest number of records in one feedback
	// message; a full batch goes out at once. Default 64.
	FeedbackBatchSize int `yaml:"feedbackBatchSize"`
	// FeedbackInterval is how long a partial batch waits after the link's
	// previous batch. Default 1 s (IoT Hub: up to 15 s).
	FeedbackInterval time.Duration `yaml:"feedbackInterval"`
	// FeedbackLockDuration, FeedbackTTL and FeedbackMaxDeliveryCount
	// govern feedback records. Defaults 60 s, 1 h, 10.
	FeedbackLockDuration     time.Duration `yaml:"feedbackLockDuration"`
	FeedbackTTL              time.Duration `yaml:"feedbackTTL"`
	FeedbackMaxDeliveryCount int           `yaml:"feedbackMaxDeliveryCount"`
	// ReconcileInterval is how often queued state is checked against the
	// registry for deleted devices. Default 10 s; negative disables the
	// periodic check (the check at start still runs).
	ReconcileInterval time.Duration `yaml:"reconcileInterval"`
	// NoSync skips the fsync of each store commit (benchmarks, tests): a
	// process crash loses nothing, an OS crash loses the last commits.
	NoSync bool `yaml:"noSync"`
}

// Defaults for Config.
const (
	DefaultMaxQueueDepth     = c2d.DefaultMaxDepth
	DefaultMaxDeliveryCount  = c2d.DefaultMaxDeliveryCount
	DefaultLockDuration      = c2d.DefaultLockDuration
	DefaultTTL               = c2d.DefaultTTL
	DefaultMaxTTL            = 48 * time.Hour
	DefaultMaxMessageBytes   = 64 << 10
	DefaultFeedbackBatchSize = 64
	DefaultFeedbackInterval  = time.Second
	DefaultReconcileInterval = 10 * time.Second
)

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxQueueDepth, DefaultMaxQueueDepth)
	def(&c.MaxDeliveryCount, DefaultMaxDeliveryCount)
	def(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	def(&c.FeedbackBatchSize, DefaultFeedbackBatchSize)
	def(&c.FeedbackMaxDeliveryCount, c2d.DefaultFeedbackMaxDeliveryCount)
	defd(&c.LockDuration, DefaultLockDuration)
	defd(&c.DefaultTTL, DefaultTTL)
	defd(&c.MaxTTL, DefaultMaxTTL)
	defd(&c.FeedbackInterval, DefaultFeedbackInterval)
	defd(&c.FeedbackLockDuration, c2d.DefaultFeedbackLockDuration)
	defd(&c.FeedbackTTL, c2d.DefaultFeedbackTTL)
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	c.DefaultTTL = min(c.DefaultTTL, c.MaxTTL)
	return c
}

// storeConfig is the store's part of the configuration.
func (c Config) storeConfig(log *slog.Logger) c2d.Config {
	return c2d.Config{
		MaxDepth:                 c.MaxQueueDepth,
		MaxDeliveryCount:         c.MaxDeliveryCount,
		LockDuration:             c.LockDuration,
		DefaultTTL:               c.DefaultTTL,
		FeedbackLockDuration:     c.FeedbackLockDuration,
		FeedbackTTL:              c.FeedbackTTL,
		FeedbackMaxDeliveryCount: c.FeedbackMaxDeliveryCount,
		// The stored message is the service's, with its delivery
		// annotations dropped and an empty annotations section at most.
		MaxMessageBytes: c.MaxMessageBytes + 1024,
		Logger:          log,
	}
}

// Store is what the service needs from its queue store: the c2d.Store
// contract plus lock release, generation maintenance and the count of
// available feedback, which *c2d.PebbleStore provides.
type Store interface {
	c2d.Store
	Release(ctx context.Context, queueID string, token c2d.LockToken) error
	Generations(ctx context.Context) (map[string][]string, error)
	DropGenerations(ctx context.Context, queueID, keep string) (int, error)
	AvailableFeedback(ctx context.Context) (int, error)
}

var (
	_ Store = (*c2d.PebbleStore)(nil)
	_ Store = (*jsc2d.Store)(nil)
)

// Setup builds the C2D feature: it opens the store (under env.DataDir/c2d,
// or in JetStream when env.Cluster is set), drops the state of devices
// deleted while it was closed, and returns the endpoints for the service,
// device, feedback and file notification addresses; the purge route is
// added to env.REST.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg = cfg.withDefaults()
	var st Store
	if env.Cluster != nil {
		// Scale-out: the queues live in JetStream, so that any node can
		// serve any device and service.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		js, err := jsc2d.Open(ctx, env.Cluster.JS, jsc2d.Options{
			Bucket:   env.Cluster.Bucket("c2d"),
			Replicas: env.Cluster.Replicas,
			NodeID:   env.Cluster.NodeID,
			Config:   cfg.storeConfig(log),
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("c2d store: %w", err)
		}
		st = js
	} else {
		pst, err := c2d.OpenPebble(filepath.Join(env.DataDir, "c2d"), c2d.PebbleOptions{
			InMemory: env.InMemory,
			NoSync:   cfg.NoSync,
			Config:   cfg.storeConfig(log),
		})
		if err != nil {
			return nil, fmt.Errorf("c2d store: %w", err)
		}
		st = pst
	}
	svc, err := New(st, env.Registry, env.HubName, cfg, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	if env.REST != nil {
		svc.RegisterREST(env.REST)
	}
	return &hub.Module{
		Endpoints: svc.Endpoints(),
		Close: func() error {
			svc.Close()
			if err := st.Close(); err != nil {
				return fmt.Errorf("c2d store: %w", err)
			}
			return nil
		},
	}, nil
}

// Service is the C2D feature. Create it with New; it is safe for
// concurrent use.
type Service struct {
	store   Store
	reg     registry.Store
	hubName string
	cfg     Config
	log     *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// lost holds, per queue, locks whose link went away before the device
	// settled; a device link attaching to the queue releases them.
	lost map[string][]lostLock
	// links holds the device links of each queue.
	links map[string]map[*deviceLink]struct{}
}

// lostLock is the lock of a message sent on a link and not settled.
type lostLock struct {
	token c2d.LockToken
	seq   uint64
	until time.Time
}

// New returns a service on st (which it does not close); reg resolves
// devices; hubName is the user-id of feedback messages. It checks st
// against reg once before returning (see the package documentation on
// deleted devices) and starts the periodic check.
func New(st Store, reg registry.Store, hubName string, cfg Config, log *slog.Logger) (*Service, error) {
	if st == nil || reg == nil {
		return nil, errors.New("c2d service: a store and a registry are required")
	}
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		store:   st,
		reg:     reg,
		hubName: hubName,
		cfg:     cfg.withDefaults(),
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		lost:    make(map[string][]lostLock),
		links:   make(map[string]map[*deviceLink]struct{}),
	}
	if err := s.Reconcile(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("c2d service: %w", err)
	}
	if s.cfg.ReconcileInterval > 0 {
		s.wg.Add(1)
		go s.reconcileLoop()
	}
	return s, nil
}

// Endpoints returns the endpoints of the C2D address kinds.
func (s *Service) Endpoints() map[hub.Kind]hub.Endpoint {
	return map[hub.Kind]hub.Endpoint{
		hub.KindServiceC2D:        hub.EndpointFunc(s.attachService),
		hub.KindDeviceBound:       hub.EndpointFunc(s.attachDevice),
		hub.KindFeedback:          hub.EndpointFunc(s.attachFeedback),
		hub.KindFileNotifications: hub.EndpointFunc(s.attachFileNotifications),
	}
}

// Close stops the service's goroutines and waits for them. Links still
// attached stop being served; call it after the engine stopped. The store
// stays open.
func (s *Service) Close() {
	// Cancelling under mu orders it with goTracked's check, so no
	// goroutine is added once Wait may have started.
	s.mu.Lock()
	s.cancel()
	s.mu.Unlock()
	s.wg.Wait()
}

// goTracked runs f on a goroutine that Close waits for and reports
// whether it did; once Close has begun it does not run f.
func (s *Service) goTracked(f func()) bool {
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return false
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// queueID names the queue of a device or module. Registry ids cannot
// contain '/', so the module form cannot collide with a device id.
func queueID(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return deviceID + "/modules/" + moduleID
}
