package client

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/sas"
)

// DefaultTokenLifetime is how long the SAS tokens a client signs are
// valid; they are renewed after three quarters of it.
const DefaultTokenLifetime = time.Hour

// DeviceOptions adjust how a DeviceClient reaches the hub. The zero value
// (or nil) connects to {HostName}:5671 with the system's roots.
type DeviceOptions struct {
	// TLSConfig trusts the hub's certificate (e.g. amqphub's local CA). Its
	// ServerName defaults to the hub's HostName.
	TLSConfig *tls.Config
	// Address overrides where the client connects: host:port (TLS), or
	// amqps://host:port or amqp://host:port (plain AMQP, for a local hub
	// only). The connection string's HostName is still what tokens name
	// and what the TLS certificate must match.
	Address string
	// TokenLifetime is the lifetime of the tokens the client signs with
	// its key (default 1 h). They are renewed on the open connection after
	// three quarters of it.
	TokenLifetime time.Duration
	// TokenSource renews a client made from a SAS token: it returns a
	// fresh token for the device. Without it such a client stops working
	// when its token expires.
	TokenSource func(ctx context.Context) (string, error)
	// Retry says how calls retry after a lost connection or throttling.
	Retry RetryOptions
	// Logger receives connection events; default: none.
	Logger *slog.Logger
}

// DeviceClient is a device (or module) connected to IoT Hub over AMQP: it
// sends telemetry, receives cloud-to-device messages, reads and updates its
// twin and answers direct methods.
//
// The client connects on first use (or Connect), authenticates with a CBS
// put-token (or its X.509 certificate) and renews its token before it
// expires. After a network fault it reconnects with backoff: calls in
// flight fail with an error wrapping ErrConnectionLost or are retried as
// RetryOptions say, never dropped silently, and method handlers and the
// desired-property subscription are restored on the new connection.
//
// A DeviceClient is safe for concurrent use. Close it to release its
// connection and goroutines.
type DeviceClient struct {
	hostName, deviceID, moduleID string
	base                         string // /devices/{id}[/modules/{mid}]
	conn                         *connector
	retry                        RetryOptions
	log                          *slog.Logger

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	events *serialQueue // desired-property callbacks, in order

	mu            sync.Mutex
	methods       map[string]MethodHandler
	desired       func(DesiredUpdate)
	c2dHandler    func(*C2DMessage)
	keeperStarted bool
	changed       chan struct{}
	closed        bool
}

// NewDeviceClient returns a client for the device or module of a
// connection string (HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=...
// or SharedAccessSignature=...). It does not connect yet.
func NewDeviceClient(connectionString string, opts *DeviceOptions) (*DeviceClient, error) {
	dc, err := ParseDeviceConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &DeviceOptions{}
	}
	if dc.SharedAccessKey == "" {
		return NewDeviceClientFromSAS(dc.HostName, dc.DeviceID, dc.ModuleID, dc.SharedAccessSignature, opts)
	}
	key, err := base64.StdEncoding.DecodeString(dc.SharedAccessKey)
	if err != nil {
		return nil, fmt.Errorf("client: SharedAccessKey is not base64: %w", err)
	}
	life := opts.TokenLifetime
	if life <= 0 {
		life = DefaultTokenLifetime
	}
	resource := dc.Resource()
	sign := func(context.Context) (string, time.Time, error) {
		exp := tokenExpiry(life)
		return SignToken(resource, key, "", exp), exp, nil
	}
	return newDeviceClient(dc.HostName, dc.DeviceID, dc.ModuleID, sign, nil, opts)
}

// NewDeviceClientFromSAS returns a client that authenticates with a SAS
// token made elsewhere (e.g. by a token service) for the device or module.
// Set DeviceOptions.TokenSource to renew it.
func NewDeviceClientFromSAS(hostName, deviceID, moduleID, token string, opts *DeviceOptions) (*DeviceClient, error) {
	if opts == nil {
		opts = &DeviceOptions{}
	}
	t, err := sas.Parse(token)
	if err != nil {
		return nil, fmt.Errorf("client: the device token: %w", err)
	}
	// The first connection uses the given token; later connections and
	// renewals ask the token source, if any, for a fresh one.
	var mu sync.Mutex
	tok, exp, used := token, t.Expiry, false
	src := opts.TokenSource
	tokenFn := func(ctx context.Context) (string, time.Time, error) {
		mu.Lock()
		defer mu.Unlock()
		if src != nil && used {
			nt, err := src(ctx)
			if err != nil {
				return "", time.Time{}, fmt.Errorf("token source: %w", err)
			}
			pt, err := sas.Parse(nt)
			if err != nil {
				return "", time.Time{}, fmt.Errorf("token source: %w", err)
			}
			tok, exp = nt, pt.Expiry
		}
		used = true
		return tok, exp, nil
	}
	return newDeviceClient(hostName, deviceID, moduleID, tokenFn, nil, opts)
}

// NewDeviceClientFromX509 returns a client that authenticates with a TLS
// client certificate (no token). The hub must know the device as an X.509
// device.
func NewDeviceClientFromX509(hostName, deviceID, moduleID string, cert tls.Certificate, opts *DeviceOptions) (*DeviceClient, error) {
	if opts == nil {
		opts = &DeviceOptions{}
	}
	o := *opts
	if o.TLSConfig != nil {
		o.TLSConfig = o.TLSConfig.Clone()
	} else {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	o.TLSConfig.Certificates = []tls.Certificate{cert}
	return newDeviceClient(hostName, deviceID, moduleID, nil, &cert, &o)
}

func newDeviceClient(hostName, deviceID, moduleID string, token func(context.Context) (string, time.Time, error), cert *tls.Certificate, opts *DeviceOptions) (*DeviceClient, error) {
	if hostName == "" || deviceID == "" {
		return nil, errors.New("client: a device client needs the hub's host name and a device id")
	}
	u, err := amqpURL(hostName, opts.Address)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := "/devices/" + url.PathEscape(deviceID)
	// The CBS audience is the resource the token signs, ids unescaped (as
	// the C SDK sends it); link addresses escape them.
	resource := DeviceConnection{HostName: hostName, DeviceID: deviceID, ModuleID: moduleID}.Resource()
	if moduleID != "" {
		base += "/modules/" + url.PathEscape(moduleID)
	}
	cfg := dialConfig{hostName: stripPort(hostName), url: u, tlsConfig: opts.TLSConfig, log: log}
	if cert == nil {
		cfg.anonymous = true
		cfg.claims = []claim{{audience: resource, token: token}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &DeviceClient{
		hostName: hostName, deviceID: deviceID, moduleID: moduleID, base: base,
		conn:    newConnector(cfg),
		retry:   opts.Retry.withDefaults(),
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		methods: map[string]MethodHandler{},
		changed: make(chan struct{}, 1),
	}
	d.events = newSerialQueue(&d.wg)
	return d, nil
}

// DeviceID returns the device id.
func (d *DeviceClient) DeviceID() string { return d.deviceID }

// ModuleID returns the module id ("" for a device).
func (d *DeviceClient) ModuleID() string { return d.moduleID }

// Connect connects and authenticates now rather than on first use, so
// that bad credentials show up early. It does not retry.
func (d *DeviceClient) Connect(ctx context.Context) error {
	_, err := d.conn.get(ctx)
	return err
}

// Close closes the connection and stops the client's goroutines (it waits
// for running method handlers, whose context it cancels). Calls after
// Close fail with ErrClosed.
func (d *DeviceClient) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.cancel()
	d.conn.close()
	d.events.close()
	d.wg.Wait()
	return nil
}

// do runs f on a live connection, reconnecting and retrying as the retry
// options allow.
func (d *DeviceClient) do(ctx context.Context, op string, f func(context.Context, *liveConn) error) error {
	return doRetry(ctx, d.conn, d.retry, d.log, op, f)
}

func doRetry(ctx context.Context, c *connector, r RetryOptions, log *slog.Logger, op string, f func(context.Context, *liveConn) error) error {
	for attempt := 0; ; attempt++ {
		lc, err := c.get(ctx)
		if err == nil {
			err = f(ctx, lc)
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return fmt.Errorf("%s: %w", op, ErrClosed)
		}
		stale := lc != nil && errors.Is(err, ErrUnauthorized) && lc.claimExpired()
		if stale {
			// The token lapsed before it could be renewed (a suspended
			// machine, a long outage of $cbs): a new connection gets fresh
			// ones.
			lc.fail(err)
		}
		if !(retryable(err) || stale && attempt == 0) || !r.allows(attempt) || ctx.Err() != nil {
			return err
		}
		log.Debug("amqphub client: retrying", "op", op, "attempt", attempt+1, "err", err)
		if !sleep(ctx, c.stop, r.delay(attempt)) {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w; last error: %w", op, ctx.Err(), err)
			}
			return fmt.Errorf("%s: %w", op, ErrClosed)
		}
	}
}

// SendEvent sends one telemetry message and returns once the hub has
// accepted (stored) it. After a lost connection it is sent again on the
// next one (at least once: the hub may then hold it twice).
func (d *DeviceClient) SendEvent(ctx context.Context, m *Message) error {
	am, err := m.amqpMessage("")
	if err != nil {
		return fmt.Errorf("send event: %w", err)
	}
	return d.sendEvents(ctx, "send event", am)
}

// SendEventBatch sends several telemetry messages as one AMQP batch
// (format 0x80013700): the hub accepts or refuses them together, and the
// whole batch must fit the hub's message size limit (256 KiB on IoT Hub).
func (d *DeviceClient) SendEventBatch(ctx context.Context, ms []*Message) error {
	if len(ms) == 0 {
		return errors.New("send event batch: no messages")
	}
	batch := &goamqp.Message{Format: batchFormat, Data: make([][]byte, 0, len(ms))}
	for i, m := range ms {
		am, err := m.amqpMessage("")
		if err != nil {
			return fmt.Errorf("send event batch: message %d: %w", i, err)
		}
		b, err := am.MarshalBinary()
		if err != nil {
			return fmt.Errorf("send event batch: encode message %d: %w", i, err)
		}
		batch.Data = append(batch.Data, b)
	}
	return d.sendEvents(ctx, "send event batch", batch)
}

func (d *DeviceClient) sendEvents(ctx context.Context, op string, am *goamqp.Message) error {
	addr := d.base + "/messages/events"
	return d.do(ctx, op, func(ctx context.Context, lc *liveConn) error {
		snd, err := cachedLink(ctx, lc, "events", func(ctx context.Context, s *goamqp.Session) (*goamqp.Sender, error) {
			return s.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: linkProps("")})
		})
		if err != nil {
			return amqpErr(op+": attach "+addr, err)
		}
		err = snd.Send(ctx, am, nil)
		lc.note("events", err)
		return amqpErr(op, err)
	})
}

// linkProps are the attach properties of device links.
func linkProps(channel string) map[string]any {
	p := map[string]any{
		"com.microsoft:client-version": UserAgent,
		"com.microsoft:api-version":    APIVersion,
	}
	if channel != "" {
		p["com.microsoft:channel-correlation-id"] = channel
	}
	return p
}

// features says which background features are registered.
func (d *DeviceClient) features() (methods, desired, c2d bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.methods) > 0, d.desired != nil, d.c2dHandler != nil
}

// kick starts the keeper if needed and tells it the features changed.
func (d *DeviceClient) kick() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if !d.keeperStarted {
		d.keeperStarted = true
		d.wg.Add(1)
		go d.keep()
	}
	select {
	case d.changed <- struct{}{}:
	default:
	}
	return nil
}

// keep maintains the background features (method handlers, the desired
// subscription, a C2D handler) across reconnects: whenever the connection
// or one of their links is lost it reconnects with backoff and sets them up
// again.
func (d *DeviceClient) keep() {
	defer d.wg.Done()
	attempt := 0
	for {
		if d.ctx.Err() != nil {
			return
		}
		lc, err := d.conn.get(d.ctx)
		if err == nil {
			err = d.setup(lc)
		}
		if err != nil {
			if errors.Is(err, ErrClosed) || d.ctx.Err() != nil {
				return
			}
			d.log.Info("amqphub client: cannot restore handlers; retrying", "device", d.deviceID, "err", err)
			if !sleep(d.ctx, nil, d.retry.delay(attempt)) {
				return
			}
			attempt++
			continue
		}
		stable := time.NewTimer(30 * time.Second)
		select {
		case <-d.ctx.Done():
			stable.Stop()
			return
		case <-lc.done:
		case <-d.changed:
		case <-stable.C:
			attempt = 0
		}
		stable.Stop()
		if !lc.alive() {
			// Reconnect after a pause, so a hub that drops every
			// connection at once is not hammered.
			if !sleep(d.ctx, nil, d.retry.delay(attempt)) {
				return
			}
			attempt++
		}
	}
}

// setup makes sure the registered features have their links on lc.
func (d *DeviceClient) setup(lc *liveConn) error {
	methods, desired, c2d := d.features()
	ctx, cancel := context.WithTimeout(d.ctx, dialTimeout)
	defer cancel()
	if methods {
		if _, err := d.methodChannel(ctx, lc); err != nil {
			return err
		}
	}
	if desired {
		tc, err := d.twinChannel(ctx, lc)
		if err != nil {
			return err
		}
		if err := tc.subscribe(ctx); err != nil {
			lc.note("twin", err)
			return err
		}
	}
	if c2d {
		if _, err := d.c2dLoop(ctx, lc); err != nil {
			return err
		}
	}
	return nil
}

// serialQueue runs callbacks one at a time, in order, on its own
// goroutine, so a slow callback never stalls a link's receive loop and a
// callback may call the client.
type serialQueue struct {
	wg *sync.WaitGroup

	mu      sync.Mutex
	q       []func()
	running bool
	closed  bool
}

func newSerialQueue(wg *sync.WaitGroup) *serialQueue { return &serialQueue{wg: wg} }

func (s *serialQueue) push(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.q = append(s.q, f)
	if !s.running {
		s.running = true
		s.wg.Add(1)
		go s.run()
	}
}

func (s *serialQueue) run() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(s.q) == 0 || s.closed {
			s.running = false
			s.q = nil
			s.mu.Unlock()
			return
		}
		f := s.q[0]
		s.q = s.q[1:]
		s.mu.Unlock()
		f()
	}
}

func (s *serialQueue) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}
