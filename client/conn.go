package client

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// Token types of CBS put-token requests.
const (
	tokenTypeSAS = "servicebus.windows.net:sastoken"
)

// Timeouts of the connection machinery itself; the caller's context
// bounds them further.
const (
	dialTimeout  = 30 * time.Second
	closeTimeout = 5 * time.Second
)

// claim is a token the connection puts on $cbs (and renews): for the
// device's identity, the service's hub-wide policy, or one Event Hubs
// partition.
type claim struct {
	audience string
	// token returns a token for the audience and its expiry; a zero
	// expiry means it is never renewed.
	token func(ctx context.Context) (string, time.Time, error)
}

// dialConfig is how a connector reaches its endpoint.
type dialConfig struct {
	// hostName is the hub's name: AMQP open hostname and TLS server name.
	hostName string
	// url is amqps://host:port (or amqp:// for plain AMQP).
	url       string
	tlsConfig *tls.Config
	// anonymous selects SASL ANONYMOUS (tokens go through CBS); without
	// it no SASL layer is used (X.509 certificates).
	anonymous bool
	// claims are put on every new connection.
	claims []claim
	// renewAt is the fraction of a token's lifetime after which it is
	// renewed.
	renewAt float64
	log     *slog.Logger
}

// connector owns the AMQP connection of a client: it dials on demand,
// authenticates, renews tokens, and forgets a connection once it fails so
// that the next call dials again. It never retries by itself; callers
// decide (see RetryOptions).
type connector struct {
	cfg  dialConfig
	stop chan struct{} // closed by close

	mu      sync.Mutex
	cur     *liveConn
	dialing chan struct{} // non-nil while one caller dials
	closed  bool

	wg sync.WaitGroup // goroutines of live connections
}

func newConnector(cfg dialConfig) *connector {
	if cfg.renewAt <= 0 || cfg.renewAt >= 1 {
		cfg.renewAt = 0.75
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	return &connector{cfg: cfg, stop: make(chan struct{})}
}

// get returns the live connection, dialing one if there is none. When
// another caller is already dialing, it waits for that attempt.
func (c *connector) get(ctx context.Context) (*liveConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if lc := c.cur; lc != nil && lc.alive() {
			c.mu.Unlock()
			return lc, nil
		}
		if w := c.dialing; w != nil {
			c.mu.Unlock()
			select {
			case <-w:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-c.stop:
				return nil, ErrClosed
			}
		}
		w := make(chan struct{})
		c.dialing = w
		c.mu.Unlock()

		lc, err := c.dial(ctx)

		c.mu.Lock()
		c.dialing = nil
		close(w)
		if err == nil && c.closed {
			c.mu.Unlock()
			lc.fail(ErrClosed)
			return nil, ErrClosed
		}
		if err == nil {
			c.cur = lc
		}
		c.mu.Unlock()
		return lc, err
	}
}

// current returns the live connection without dialing (nil if none).
func (c *connector) current() *liveConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil && c.cur.alive() {
		return c.cur
	}
	return nil
}

// dial opens, authenticates and starts the goroutines of a connection.
func (c *connector) dial(ctx context.Context) (*liveConn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	opts := &goamqp.ConnOptions{
		HostName:   c.cfg.hostName,
		TLSConfig:  c.cfg.tlsConfig,
		Properties: map[string]any{"product": "amqphub-go-client", "user-agent": UserAgent},
	}
	if c.cfg.anonymous {
		opts.SASLType = goamqp.SASLTypeAnonymous()
	}
	conn, err := goamqp.Dial(ctx, c.cfg.url, opts)
	if err != nil {
		return nil, amqpErr("connect to "+redactURL(c.cfg.url), err)
	}
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		conn.Close()
		return nil, amqpErr("begin session", err)
	}
	lc := &liveConn{c: c, conn: conn, sess: sess, done: make(chan struct{}), links: map[string]any{}, wake: make(chan struct{}, 1)}
	lc.ctx, lc.cancel = context.WithCancel(context.Background())
	if c.cfg.anonymous {
		cbs, err := newCBSLink(ctx, sess)
		if err != nil {
			lc.cancel()
			conn.Close()
			return nil, err
		}
		lc.cbs = cbs
		for _, cl := range c.cfg.claims {
			if err := lc.authorize(ctx, cl); err != nil {
				lc.cancel()
				conn.Close()
				return nil, err
			}
		}
	}
	if !c.spawn(lc.watch) || !c.spawn(lc.renewLoop) {
		lc.fail(ErrClosed)
		return nil, ErrClosed
	}
	c.cfg.log.Debug("amqphub client: connected", "url", redactURL(c.cfg.url))
	return lc, nil
}

// spawn runs f on a goroutine that close waits for, unless the connector
// is closed (then it reports false and f does not run). Checking closed
// and adding to the WaitGroup under one lock keeps every Add before
// close's Wait.
func (c *connector) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// close closes the connection and waits for its goroutines.
func (c *connector) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return
	}
	c.closed = true // from now on spawn refuses, so Wait below is final
	close(c.stop)
	lc := c.cur
	c.cur = nil
	c.mu.Unlock()
	if lc != nil {
		lc.fail(ErrClosed)
	}
	c.wg.Wait()
}

// liveConn is one AMQP connection with its session, $cbs links and the
// links opened on it so far.
type liveConn struct {
	c    *connector
	conn *goamqp.Conn
	sess *goamqp.Session
	cbs  *cbsLink

	// ctx ends when the connection fails: work on its behalf uses it.
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	failOnce sync.Once
	err      error // set before done closes

	mu     sync.Mutex
	links  map[string]any
	claims []*activeClaim
	wake   chan struct{} // tells renewLoop the claims changed

	linkMu sync.Mutex // serializes link creation
}

// activeClaim is a claim put on this connection and when to renew it.
type activeClaim struct {
	claim
	expiry  time.Time
	renewAt time.Time // zero: never
}

func (lc *liveConn) alive() bool {
	select {
	case <-lc.done:
		return false
	default:
		return true
	}
}

// Err returns why the connection failed (nil while alive).
func (lc *liveConn) Err() error {
	select {
	case <-lc.done:
		return lc.err
	default:
		return nil
	}
}

// fail marks the connection dead and closes it; the first error sticks.
func (lc *liveConn) fail(err error) {
	lc.failOnce.Do(func() {
		lc.err = err
		close(lc.done)
		lc.cancel()
		// go-amqp v1.7.0 can leave a Send blocked for ever when its
		// connection dies in the middle of it (it then waits for the
		// link's Close), so every link is closed too, which also returns
		// at once on a dead connection.
		lc.mu.Lock()
		links := make([]closer, 0, len(lc.links)+2)
		for _, l := range lc.links {
			links = append(links, l.(closer))
		}
		lc.mu.Unlock()
		if lc.cbs != nil {
			links = append(links, lc.cbs.snd, lc.cbs.rcv)
		}
		release := func() {
			lc.conn.Close()
			for _, l := range links {
				closeQuietly(l)
			}
		}
		// Not on the caller's time; once the connector is closed nobody
		// waits anyway.
		if !lc.c.spawn(release) {
			release()
		}
		if !errors.Is(err, ErrClosed) {
			lc.c.cfg.log.Info("amqphub client: connection lost", "url", redactURL(lc.c.cfg.url), "err", err)
		}
	})
}

// watch fails the connection when go-amqp reports it closed.
func (lc *liveConn) watch() {
	select {
	case <-lc.conn.Done():
		err := lc.conn.Err()
		if err == nil {
			err = errors.New("connection closed")
		}
		lc.fail(amqpErr("connection", err))
	case <-lc.done:
	}
}

// note inspects an operation's error: a dead session or connection fails
// the whole connection; a dead link is forgotten so the next call opens
// a new one.
func (lc *liveConn) note(key string, err error) {
	if err == nil {
		return
	}
	var sessErr *goamqp.SessionError
	var connErr *goamqp.ConnError
	var linkErr *goamqp.LinkError
	switch {
	case errors.As(err, &connErr), errors.As(err, &sessErr):
		lc.fail(amqpErr("connection", err))
	case errors.As(err, &linkErr), errors.Is(err, ErrConnectionLost):
		if key != "" {
			lc.dropLink(key)
		}
	}
}

// closer is what go-amqp links have in common.
type closer interface {
	Close(ctx context.Context) error
}

// cachedLink returns the link stored under key, creating it with create.
func cachedLink[T closer](ctx context.Context, lc *liveConn, key string, create func(context.Context, *goamqp.Session) (T, error)) (T, error) {
	var zero T
	lc.mu.Lock()
	if l, ok := lc.links[key]; ok {
		lc.mu.Unlock()
		return l.(T), nil
	}
	lc.mu.Unlock()
	lc.linkMu.Lock()
	defer lc.linkMu.Unlock()
	lc.mu.Lock()
	if l, ok := lc.links[key]; ok {
		lc.mu.Unlock()
		return l.(T), nil
	}
	lc.mu.Unlock()
	if !lc.alive() {
		return zero, fmt.Errorf("%w: %w", ErrConnectionLost, lc.Err())
	}
	l, err := create(ctx, lc.sess)
	if err != nil {
		lc.note("", err)
		return zero, err
	}
	lc.mu.Lock()
	lc.links[key] = l
	lc.mu.Unlock()
	return l, nil
}

// dropLink forgets the link under key and closes it in the background.
func (lc *liveConn) dropLink(key string) {
	lc.mu.Lock()
	l, ok := lc.links[key]
	delete(lc.links, key)
	lc.mu.Unlock()
	if !ok || !lc.alive() {
		return
	}
	lc.c.spawn(func() {
		ctx, cancel := context.WithTimeout(lc.ctx, closeTimeout)
		defer cancel()
		l.(closer).Close(ctx)
	})
}

// authorize puts a claim's token on $cbs and keeps it renewed.
func (lc *liveConn) authorize(ctx context.Context, cl claim) error {
	if lc.cbs == nil {
		return errors.New("this connection does not use CBS tokens")
	}
	tok, exp, err := cl.token(ctx)
	if err != nil {
		return fmt.Errorf("token for %s: %w", cl.audience, err)
	}
	if err := lc.cbs.putToken(ctx, cl.audience, tok); err != nil {
		lc.note("", err)
		return err
	}
	ac := &activeClaim{claim: cl, expiry: exp}
	ac.renewAt = renewTime(time.Now(), exp, lc.c.cfg.renewAt)
	lc.mu.Lock()
	lc.claims = append(lc.claims, ac)
	lc.mu.Unlock()
	select {
	case lc.wake <- struct{}{}:
	default:
	}
	return nil
}

// claimExpired reports whether a token put on the connection has expired
// without being renewed.
func (lc *liveConn) claimExpired() bool {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	now := time.Now()
	for _, ac := range lc.claims {
		if !ac.expiry.IsZero() && !now.Before(ac.expiry) {
			return true
		}
	}
	return false
}

// renewTime is when a token issued at now and valid until exp is renewed.
func renewTime(now, exp time.Time, frac float64) time.Time {
	if exp.IsZero() {
		return time.Time{}
	}
	life := exp.Sub(now)
	if life <= 0 {
		return now
	}
	return now.Add(time.Duration(float64(life) * frac))
}

// renewLoop renews each claim's token before it expires, on the same
// $cbs links, so that the links it authorized stay attached.
func (lc *liveConn) renewLoop() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := time.Time{}
		lc.mu.Lock()
		for _, ac := range lc.claims {
			if !ac.renewAt.IsZero() && (next.IsZero() || ac.renewAt.Before(next)) {
				next = ac.renewAt
			}
		}
		lc.mu.Unlock()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		t.Reset(wait)
		select {
		case <-lc.done:
			return
		case <-lc.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
			continue
		case <-t.C:
		}
		lc.renewDue()
	}
}

// renewDue renews the claims whose time has come. A failed renewal is
// retried until the token expires; a refusal (bad key, disabled device)
// fails the connection, since its links are about to be detached anyway.
func (lc *liveConn) renewDue() {
	now := time.Now()
	lc.mu.Lock()
	var due []*activeClaim
	for _, ac := range lc.claims {
		if !ac.renewAt.IsZero() && !now.Before(ac.renewAt) {
			due = append(due, ac)
		}
	}
	lc.mu.Unlock()
	for _, ac := range due {
		// A lost reply must not outlast the token: leave time to retry.
		wait := min(30*time.Second, max(time.Until(ac.expiry)/2, time.Second))
		ctx, cancel := context.WithTimeout(lc.ctx, wait)
		tok, exp, err := ac.token(ctx)
		if err == nil && !exp.After(ac.expiry) {
			// A fixed token cannot be renewed: stop trying; the hub
			// detaches its links when it expires.
			lc.mu.Lock()
			ac.renewAt = time.Time{}
			lc.mu.Unlock()
			cancel()
			continue
		}
		if err == nil {
			err = lc.cbs.putToken(ctx, ac.audience, tok)
		}
		cancel()
		lc.mu.Lock()
		if err == nil {
			ac.expiry = exp
			ac.renewAt = renewTime(time.Now(), exp, lc.c.cfg.renewAt)
		} else {
			// Retry soon, but not in a tight loop.
			ac.renewAt = time.Now().Add(min(time.Second, max(time.Until(ac.expiry)/4, 50*time.Millisecond)))
		}
		lc.mu.Unlock()
		if err == nil {
			lc.c.cfg.log.Debug("amqphub client: token renewed", "audience", ac.audience, "expires", exp)
			continue
		}
		var cbsErr *CBSError
		if errors.As(err, &cbsErr) && !retryable(err) {
			lc.fail(err)
			return
		}
		if !lc.alive() {
			return
		}
		lc.c.cfg.log.Info("amqphub client: token renewal failed; retrying", "audience", ac.audience, "err", err)
	}
}

// cbsLink is a connection's pair of $cbs links.
type cbsLink struct {
	mu      sync.Mutex // one request at a time
	snd     *goamqp.Sender
	rcv     *goamqp.Receiver
	replyTo string
}

func newCBSLink(ctx context.Context, sess *goamqp.Session) (*cbsLink, error) {
	replyTo := "cbs-" + newUUID()
	snd, err := sess.NewSender(ctx, "$cbs", nil)
	if err != nil {
		return nil, amqpErr("attach $cbs sender", err)
	}
	rcv, err := sess.NewReceiver(ctx, "$cbs", &goamqp.ReceiverOptions{TargetAddress: replyTo, Credit: 10})
	if err != nil {
		return nil, amqpErr("attach $cbs receiver", err)
	}
	return &cbsLink{snd: snd, rcv: rcv, replyTo: replyTo}, nil
}

// putToken sends one put-token request and waits for its reply.
func (c *cbsLink) putToken(ctx context.Context, audience, token string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := newUUID()
	to := "$cbs"
	msg := &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: id, To: &to, ReplyTo: &c.replyTo},
		ApplicationProperties: map[string]any{
			"operation": "put-token",
			"type":      tokenTypeSAS,
			"name":      audience,
		},
		Value: token,
	}
	if err := c.snd.Send(ctx, msg, nil); err != nil {
		return amqpErr("CBS put-token", err)
	}
	for {
		m, err := c.rcv.Receive(ctx, nil)
		if err != nil {
			return amqpErr("CBS put-token reply", err)
		}
		_ = c.rcv.AcceptMessage(ctx, m)
		if m.Properties == nil || m.Properties.CorrelationID != id {
			continue // the reply to an earlier, abandoned request
		}
		status, desc := replyStatus(m)
		if status/100 != 2 {
			return &CBSError{Audience: audience, Status: status, Description: desc}
		}
		return nil
	}
}

// replyStatus reads the status of a CBS or management reply. Services
// send status-code (or statusCode) as an int; other integer types are
// accepted too.
func replyStatus(m *goamqp.Message) (int, string) {
	status := -1
	for _, k := range []string{"status-code", "statusCode"} {
		if v, ok := m.ApplicationProperties[k]; ok {
			if n, ok := toInt64(v); ok {
				status = int(n)
				break
			}
		}
	}
	desc := ""
	for _, k := range []string{"status-description", "statusDescription"} {
		if s, ok := m.ApplicationProperties[k].(string); ok {
			desc = s
			break
		}
	}
	return status, desc
}

func toInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case int16:
		return int64(n), true
	case int8:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		if n > 1<<62 {
			return 0, false
		}
		return int64(n), true
	}
	return 0, false
}

// newUUID returns a random (version 4) UUID in its text form.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// amqpURL builds the URL a client dials: addr may be empty (the hub's
// host on 5671), host:port (TLS), or a URL with scheme amqp or amqps.
func amqpURL(hostName, addr string) (string, error) {
	if addr == "" {
		return "amqps://" + net.JoinHostPort(stripPort(hostName), "5671"), nil
	}
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", addr, err)
		}
		switch u.Scheme {
		case "amqp", "amqps":
		default:
			return "", fmt.Errorf("address %q: the scheme must be amqp or amqps", addr)
		}
		if u.Host == "" {
			return "", fmt.Errorf("address %q has no host", addr)
		}
		return u.Scheme + "://" + u.Host, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("address %q: want host:port: %w", addr, err)
	}
	return "amqps://" + addr, nil
}

func stripPort(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return h
}

// redactURL drops any user information from a URL for logs and errors.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return u.String()
}

// tokenExpiry is the expiry of a token signed now for life, in whole
// seconds as the token's se field carries it, so that renewal is planned
// from the expiry the hub sees.
func tokenExpiry(life time.Duration) time.Time {
	return time.Now().Add(life).Truncate(time.Second)
}
