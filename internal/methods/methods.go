// Package methods serves direct methods: REST invocations routed to the
// device's methods link and its replies.
//
// A device (or module) that handles methods opens two links on
// /devices/{id}/methods/devicebound (/devices/{id}/modules/{mid}/...): one
// where the hub sends requests and one where the device sends responses.
// A service calls POST /twins/{id}/methods (or
// /twins/{id}/modules/{mid}/methods) with {"methodName", "payload",
// "responseTimeoutInSeconds", "connectTimeoutInSeconds"}; the hub sends the
// request, pre-settled, on the newest request link of that device with a
// fresh version-4 uuid as correlation-id (AMQP uuid type), the method name
// in the application property IoThub-methodname and the JSON payload as
// body. The device answers on a response link with the same correlation-id
// (uuid, or its text), the application property IoThub-status (int) and a
// JSON body; responses are matched by the uuid's value, whatever its AMQP
// type, and only from the called identity's links. The service gets HTTP
// 200 {"status": <IoThub-status>, "payload": <body>}.
//
// Failures, with IoT Hub's codes:
//
//	404 DeviceNotFound (404001) / ModuleNotFound (404010)  no such identity
//	404 DeviceNotOnline (404103)           no request link within connectTimeoutInSeconds
//	504 GatewayTimeout (504101)            no response within responseTimeoutInSeconds
//	404 DeviceConnectionClosedRemotely (404104)  the request link went away mid-call
//	502 BadDeviceResponse                  a response without IoThub-status or with a non-JSON body
//	400 ArgumentInvalid                    bad method name, timeouts out of range, bad JSON
//	413 MessageTooLarge                    payload over 128 KB
//
// Every wait is bounded by the call's timeouts and by the HTTP request's
// context; nothing outlives the call.
//
// With Env.Cluster, a call reaching a node that does not hold the device's
// link is forwarded through NATS to the node that does (see cluster.go);
// the service gets the same answers.
package methods

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/registry"
)

// Config configures direct methods.
type Config struct {
	// MinResponseTimeout is the smallest responseTimeoutInSeconds
	// accepted. Default 5 s, as IoT Hub.
	MinResponseTimeout time.Duration `yaml:"minResponseTimeout"`
	// MaxResponseTimeout and MaxConnectTimeout bound the timeouts a call
	// may ask for. Default 300 s each, as IoT Hub.
	MaxResponseTimeout time.Duration `yaml:"maxResponseTimeout"`
	MaxConnectTimeout  time.Duration `yaml:"maxConnectTimeout"`
	// MaxPayloadBytes bounds request and response payloads. Default
	// 128 KiB, as IoT Hub.
	MaxPayloadBytes int `yaml:"maxPayloadBytes"`
}

// Defaults for Config.
const (
	DefaultMinResponseTimeout = 5 * time.Second
	DefaultMaxTimeout         = 300 * time.Second
	DefaultMaxPayloadBytes    = 128 << 10
	// DefaultResponseTimeout applies when a call names none.
	DefaultResponseTimeout = 30 * time.Second
)

func (c Config) withDefaults() Config {
	if c.MinResponseTimeout <= 0 {
		c.MinResponseTimeout = DefaultMinResponseTimeout
	}
	if c.MaxResponseTimeout <= 0 {
		c.MaxResponseTimeout = DefaultMaxTimeout
	}
	if c.MaxConnectTimeout <= 0 {
		c.MaxConnectTimeout = DefaultMaxTimeout
	}
	if c.MaxPayloadBytes <= 0 {
		c.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	return c
}

// Errors of Invoke, to be tested with errors.Is.
var (
	// ErrDeviceNotOnline: no request link attached within the connect timeout.
	ErrDeviceNotOnline = errors.New("the device is not online or has not subscribed to direct methods")
	// ErrTimeout: no response within the response timeout.
	ErrTimeout = errors.New("the device did not respond to the method call in time")
	// ErrConnectionClosed: the request link went away before a response.
	ErrConnectionClosed = errors.New("the device's methods link closed before it responded")
	// ErrBadResponse: the response lacked IoThub-status or its body was not JSON.
	ErrBadResponse = errors.New("the device sent an invalid method response")
	// ErrInvalidRequest: bad method name, timeouts or payload.
	ErrInvalidRequest = errors.New("invalid method request")
	// ErrPayloadTooLarge: the payload exceeds MaxPayloadBytes.
	ErrPayloadTooLarge = errors.New("method payload too large")
)

// Setup builds the direct-methods feature: the endpoint for
// hub.KindMethods and the REST routes.
func Setup(env *hub.Env, cfg Config) (*hub.Module, error) {
	ep := New(env.Registry, cfg, env.Logger)
	mod := &hub.Module{Endpoints: map[hub.Kind]hub.Endpoint{hub.KindMethods: ep}}
	if env.Cluster != nil {
		ep.SetCluster(env.Cluster)
		mod.Close = ep.Close
	}
	if env.REST != nil {
		ep.RegisterREST(env.REST)
	}
	return mod, nil
}

// key names a device (module empty) or module.
type key struct{ device, module string }

func (k key) String() string {
	if k.module == "" {
		return k.device
	}
	return k.device + "/" + k.module
}

// Endpoint routes method calls to device links and matches responses.
type Endpoint struct {
	reg registry.Store
	cfg Config
	log *slog.Logger

	// cluster is set (before serving) when calls may come from, or go
	// to, other nodes; see cluster.go.
	cluster *clusterState

	mu      sync.Mutex
	targets map[key][]*amqp.Link // request links, newest last
	waiting map[key]*attachWait
	calls   map[encoding.UUID]*call
}

var _ hub.Endpoint = (*Endpoint)(nil)

// attachWait lets calls wait for a device's request link to attach.
type attachWait struct {
	ch      chan struct{} // closed when a request link attaches
	waiters int
}

// call is an invocation waiting for its response.
type call struct {
	key    key
	result chan outcome // buffered: the responder never blocks
}

// outcome is a parsed device response, or why it is unusable.
type outcome struct {
	resp Response
	err  error
}

// New returns an endpoint; reg is where it checks that called identities
// exist.
func New(reg registry.Store, cfg Config, log *slog.Logger) *Endpoint {
	if log == nil {
		log = slog.Default()
	}
	return &Endpoint{
		reg:     reg,
		cfg:     cfg.withDefaults(),
		log:     log,
		targets: map[key][]*amqp.Link{},
		waiting: map[key]*attachWait{},
		calls:   map[encoding.UUID]*call{},
	}
}

// Attach implements hub.Endpoint.
func (e *Endpoint) Attach(req *hub.AttachRequest) *amqp.Error {
	k := key{req.Route.DeviceID, req.Route.ModuleID}
	l := req.Link
	if !l.IsSender() {
		// Responses: payload plus room for the envelope.
		l.SetMaxMessageSize(uint64(e.cfg.MaxPayloadBytes) + 16<<10)
		l.OnMessage(func(d *amqp.Delivery) { e.onResponse(k, d) })
		return nil
	}
	e.mu.Lock()
	e.targets[k] = append(e.targets[k], l)
	if len(e.targets[k]) == 1 && e.cluster != nil {
		e.cluster.subscribeLocked(e, k)
	}
	if w := e.waiting[k]; w != nil {
		close(w.ch)
		delete(e.waiting, k)
	}
	e.mu.Unlock()
	go func() {
		<-l.Done()
		e.mu.Lock()
		defer e.mu.Unlock()
		ts := e.targets[k]
		for i, t := range ts {
			if t == l {
				ts = append(ts[:i], ts[i+1:]...)
				break
			}
		}
		if len(ts) == 0 {
			delete(e.targets, k)
			if e.cluster != nil {
				e.cluster.unsubscribeLocked(e, k)
			}
		} else {
			e.targets[k] = ts
		}
	}()
	return nil
}

// Online reports whether a device or module has a methods request link.
func (e *Endpoint) Online(deviceID, moduleID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.targets[key{deviceID, moduleID}]) > 0
}

// target returns the newest request link of k, waiting up to d for one.
func (e *Endpoint) target(ctx context.Context, k key, d time.Duration) (*amqp.Link, error) {
	var timeout <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	for {
		e.mu.Lock()
		if ts := e.targets[k]; len(ts) > 0 {
			l := ts[len(ts)-1]
			e.mu.Unlock()
			return l, nil
		}
		if timeout == nil {
			e.mu.Unlock()
			return nil, ErrDeviceNotOnline
		}
		w := e.waiting[k]
		if w == nil {
			w = &attachWait{ch: make(chan struct{})}
			e.waiting[k] = w
		}
		w.waiters++
		e.mu.Unlock()

		var err error
		select {
		case <-w.ch:
		case <-timeout:
			err = ErrDeviceNotOnline
		case <-ctx.Done():
			err = ctx.Err()
		}
		e.mu.Lock()
		w.waiters--
		if w.waiters == 0 && e.waiting[k] == w {
			delete(e.waiting, k)
		}
		e.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// newUUID returns a random (version 4) uuid.
func newUUID() (encoding.UUID, error) {
	var u encoding.UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("generate correlation id: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// Request is a direct method call.
type Request struct {
	DeviceID   string
	ModuleID   string
	MethodName string
	// Payload is the JSON payload; nil sends null.
	Payload []byte
	// ResponseTimeout bounds the wait for the response once the request
	// is being sent; ConnectTimeout bounds the wait for the device to
	// attach its request link (0: it must be attached already).
	ResponseTimeout time.Duration
	ConnectTimeout  time.Duration
}

// Response is the device's answer.
type Response struct {
	Status int
	// Payload is the device's JSON body ("null" when it sent none).
	Payload []byte
}

// Invoke calls a method on a device or module and waits for its answer.
// The identity must exist in the registry. Errors wrap ErrDeviceNotOnline,
// ErrTimeout, ErrConnectionClosed, ErrBadResponse, ErrInvalidRequest,
// ErrPayloadTooLarge, the registry's not-found errors or ctx's error.
func (e *Endpoint) Invoke(ctx context.Context, req Request) (Response, error) {
	if err := e.validate(&req); err != nil {
		return Response{}, err
	}
	k := key{req.DeviceID, req.ModuleID}
	var err error
	if k.module == "" {
		_, err = e.reg.GetDevice(ctx, k.device)
	} else {
		_, err = e.reg.GetModule(ctx, k.device, k.module)
	}
	if err != nil {
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, err)
	}
	if e.cluster != nil {
		return e.invokeClustered(ctx, req, k)
	}
	l, err := e.target(ctx, k, req.ConnectTimeout)
	if err != nil {
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, err)
	}
	return e.callLink(ctx, req, k, l)
}

// callLink sends the request on l and waits for the device's answer.
func (e *Endpoint) callLink(ctx context.Context, req Request, k key, l *amqp.Link) (Response, error) {
	id, err := newUUID()
	if err != nil {
		return Response{}, err
	}
	payload := req.Payload
	if len(payload) == 0 {
		payload = []byte("null")
	}
	msg := &frames.Message{
		Properties:            &frames.Properties{CorrelationID: id},
		ApplicationProperties: map[string]any{"IoThub-methodname": req.MethodName},
		Data:                  [][]byte{payload},
	}
	enc, err := msg.AppendAMQP(nil)
	if err != nil {
		return Response{}, fmt.Errorf("encode method request: %w", err)
	}
	c := &call{key: k, result: make(chan outcome, 1)}
	e.mu.Lock()
	e.calls[id] = c
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.calls, id)
		e.mu.Unlock()
	}()

	// The response timeout covers waiting for credit too: a device that
	// grants none is as unresponsive as one that does not answer.
	wctx, cancel := context.WithTimeout(ctx, req.ResponseTimeout)
	defer cancel()
	if err := l.Send(wctx, &amqp.Outgoing{Payload: enc, Settled: true}); err != nil {
		return Response{}, e.waitError(ctx, req, k, err)
	}
	select {
	case o := <-c.result:
		if o.err != nil {
			return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, o.err)
		}
		return o.resp, nil
	case <-l.Done():
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, ErrConnectionClosed)
	case <-wctx.Done():
		return Response{}, e.waitError(ctx, req, k, wctx.Err())
	}
}

// waitError names why a call stopped waiting.
func (e *Endpoint) waitError(ctx context.Context, req Request, k key, err error) error {
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		err = ErrTimeout
	case errors.Is(err, amqp.ErrLinkClosed):
		err = ErrConnectionClosed
	}
	return fmt.Errorf("method %s on %s: %w", req.MethodName, k, err)
}

// onResponse matches a device's response to its call. It runs on the
// connection's reader goroutine and only hands the result over.
func (e *Endpoint) onResponse(k key, d *amqp.Delivery) {
	m, err := d.Message()
	if err != nil {
		e.log.Info("methods: undecodable response", "device", k.String(), "err", err)
		d.Reject(amqp.NewError(amqp.ErrCondDecodeError, "the method response is not a valid AMQP message: "+err.Error()))
		return
	}
	d.Accept()
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	id, ok := correlationUUID(corr)
	if !ok {
		e.log.Info("methods: response without a uuid correlation-id", "device", k.String(), "correlation-id", fmt.Sprint(corr))
		return
	}
	e.mu.Lock()
	c := e.calls[id]
	if c != nil && c.key == k {
		delete(e.calls, id)
	} else {
		c = nil
	}
	e.mu.Unlock()
	if c == nil {
		e.log.Debug("methods: response to no pending call (late, or not this device's)", "device", k.String(), "correlation-id", id.String())
		return
	}
	c.result <- parseResponse(m, e.cfg.MaxPayloadBytes)
}

// correlationUUID reads a correlation-id as a uuid: the uuid type, its
// text (optionally in braces) or its 16 bytes.
func correlationUUID(v any) (encoding.UUID, bool) {
	switch id := v.(type) {
	case encoding.UUID:
		return id, true
	case string:
		if len(id) == 38 && id[0] == '{' && id[37] == '}' {
			id = id[1:37]
		}
		u, err := encoding.ParseUUID(id)
		return u, err == nil
	case []byte:
		var u encoding.UUID
		if len(id) != len(u) {
			return u, false
		}
		copy(u[:], id)
		return u, true
	}
	return encoding.UUID{}, false
}
