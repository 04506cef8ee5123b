// Package server assembles a whole hub: stores, identities, the AMQP
// engine with the hub's semantics, and its listeners (plain AMQP, AMQPS,
// and HTTPS carrying AMQP over WebSockets plus the REST API). The binary's
// `serve` command and the end-to-end tests both start hubs through it.
package server

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/amqp"
	"amqphub/internal/auth"
	"amqphub/internal/c2dsvc"
	"amqphub/internal/eventhub"
	"amqphub/internal/hub"
	"amqphub/internal/methods"
	"amqphub/internal/registry"
	"amqphub/internal/rest"
	"amqphub/internal/sas"
	"amqphub/internal/telemetry"
	"amqphub/internal/tlsutil"
	"amqphub/internal/twin"
	"amqphub/store/partlog"
	jslog "amqphub/store/partlog/jetstream"
	"amqphub/store/partlog/seglog"
)

// Options configure a hub. The YAML names are the config file's keys.
type Options struct {
	// HubName is the hub's name (the first label of HostName in Azure).
	// Default "amqphub".
	HubName string `yaml:"hubName"`
	// HostName is what clients put in HostName= and SAS audiences.
	// Default "localhost".
	HostName string `yaml:"hostName"`
	// DataDir holds the stores and the local CA. Default "./amqphub-data".
	DataDir string `yaml:"dataDir"`
	// InMemory keeps everything in memory (tests, CI); the CA then lives in
	// a temporary directory.
	InMemory bool `yaml:"inMemory"`
	// Listen addresses; "off" disables a listener, port 0 picks a free one.
	AMQPAddr  string `yaml:"amqpAddr"`  // plain AMQP, default localhost:5672 (loopback only)
	AMQPSAddr string `yaml:"amqpsAddr"` // AMQP over TLS, default :5671
	HTTPSAddr string `yaml:"httpsAddr"` // HTTPS: WebSockets + REST, default :443
	// TLSCertFile and TLSKeyFile replace the generated certificate.
	TLSCertFile string `yaml:"tlsCertFile"`
	TLSKeyFile  string `yaml:"tlsKeyFile"`
	// TLSNames are extra names for the generated certificate.
	TLSNames []string `yaml:"tlsNames"`
	// Policies replace the default shared access policies.
	Policies []PolicyConfig `yaml:"policies"`
	// Devices are created at start if missing.
	Devices []DeviceConfig `yaml:"devices"`
	// EventHubName is the Event-Hub-compatible entity name; default HubName.
	EventHubName string `yaml:"eventHubName"`
	// TokenGrace is how long links outlive an expired token. Default 5s.
	TokenGrace time.Duration `yaml:"tokenGrace"`
	// Partitions is the telemetry partition count, fixed when the data
	// directory is created (1-32). Default 4.
	Partitions int `yaml:"partitions"`
	// Retention is how long telemetry is kept (1-7 days). Default 1 day.
	Retention time.Duration `yaml:"retention"`
	// RetentionBytes, if positive, also caps each partition's size: the
	// oldest records go first beyond it.
	RetentionBytes int64 `yaml:"retentionBytes"`
	// HostAliases are further host names SAS tokens may name, for nodes
	// that clients reach under several names (one per node, besides the
	// balancer's). HostName, localhost, 127.0.0.1 and HubName always are.
	HostAliases []string `yaml:"hostAliases"`
	// Cluster runs the hub as one node of several on NATS JetStream.
	Cluster ClusterOptions `yaml:"cluster"`

	// RevalidateInterval is how often live connections' credentials are
	// checked again against the registry (default 5 s; negative: never;
	// registry changes made through REST are checked at once anyway).
	RevalidateInterval time.Duration `yaml:"revalidateInterval"`
	// AuthTimeout closes connections that hold no valid token for that
	// long (default 60 s; negative: never).
	AuthTimeout time.Duration `yaml:"authTimeout"`
	// Limits are the AMQP engine's limits against misbehaving clients.
	Limits LimitOptions `yaml:"limits"`

	// Feature settings.
	Telemetry telemetry.Config `yaml:"telemetry"`
	EventHub  eventhub.Config  `yaml:"eventHub"`
	C2D       c2dsvc.Config    `yaml:"c2d"`
	Twin      twin.Config      `yaml:"twin"`
	Methods   methods.Config   `yaml:"methods"`

	// Logger receives logs; default slog.Default().
	Logger *slog.Logger `yaml:"-"`
	// Endpoints adds or replaces endpoints (tests).
	Endpoints map[hub.Kind]hub.Endpoint `yaml:"-"`
}

// LimitOptions are the AMQP engine's protocol limits; zero values keep the
// engine's defaults (amqp.Config documents them).
type LimitOptions struct {
	MaxFrameSize       uint32        `yaml:"maxFrameSize"`
	ChannelMax         uint16        `yaml:"channelMax"`
	HandleMax          uint32        `yaml:"handleMax"`
	MaxLinks           int           `yaml:"maxLinks"`
	IdleTimeout        time.Duration `yaml:"idleTimeout"`
	HandshakeTimeout   time.Duration `yaml:"handshakeTimeout"`
	MaxHandshakes      int           `yaml:"maxHandshakes"`
	MaxHandshakesPerIP int           `yaml:"maxHandshakesPerIP"`
	MaxWriteBuffer     int           `yaml:"maxWriteBuffer"`
}

// PolicyConfig is a shared access policy in the config file.
type PolicyConfig struct {
	Name         string `yaml:"name"`
	PrimaryKey   string `yaml:"primaryKey"`
	SecondaryKey string `yaml:"secondaryKey"`
	// Rights: comma-separated RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect.
	Rights string `yaml:"rights"`
}

// DeviceConfig seeds a device (and its modules).
type DeviceConfig struct {
	ID           string   `yaml:"id"`
	PrimaryKey   string   `yaml:"primaryKey"`
	SecondaryKey string   `yaml:"secondaryKey"`
	Disabled     bool     `yaml:"disabled"`
	Modules      []string `yaml:"modules"`
}

// Defaults fills unset options.
func (o *Options) Defaults() {
	if o.HubName == "" {
		o.HubName = "amqphub"
	}
	if o.HostName == "" {
		o.HostName = "localhost"
	}
	if o.DataDir == "" {
		o.DataDir = "amqphub-data"
	}
	if o.AMQPAddr == "" {
		o.AMQPAddr = "localhost:5672"
	}
	if o.AMQPSAddr == "" {
		o.AMQPSAddr = ":5671"
	}
	if o.HTTPSAddr == "" {
		o.HTTPSAddr = ":443"
	}
	if o.EventHubName == "" {
		o.EventHubName = o.HubName
	}
	if o.Partitions == 0 {
		o.Partitions = 4
	}
	if o.Retention == 0 {
		o.Retention = partlog.DefaultRetention
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Server is a running hub.
type Server struct {
	Options   Options
	Registry  registry.Store
	Log       partlog.Log
	Authority *auth.Authority
	Hub       *hub.Hub
	Engine    *amqp.Server
	REST      *rest.Handler
	// CAFile is the PEM file clients trust (empty with a user certificate).
	CAFile string
	// ClientTLS trusts the hub's certificate (Go clients, tests).
	ClientTLS *tls.Config
	// Bound addresses ("" when a listener is off).
	AMQPAddr, AMQPSAddr, HTTPSAddr string

	https   *http.Server
	cluster *hub.Cluster // nil in the embedded mode
	// presence shares connection state between cluster nodes (nil when
	// embedded).
	presence *clusterPresence
	// clusterLog is the JetStream telemetry log, for the NATS disconnect
	// handler (which is installed before the log exists).
	clusterLog atomic.Pointer[jslog.Log]
	tmpDir     string
	closers    []func() error
	wg         sync.WaitGroup
	stop       sync.Once
}

// Start builds and starts a hub.
func Start(opts Options) (*Server, error) {
	opts.Defaults()
	s := &Server{Options: opts}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	o := &s.Options
	log := o.Logger
	dir := o.DataDir
	if o.InMemory {
		tmp, err := os.MkdirTemp("", "amqphub-")
		if err != nil {
			return err
		}
		s.tmpDir, dir = tmp, tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	var reg registry.Store
	var err error
	if o.Cluster.Enabled() {
		if s.cluster, err = s.connectCluster(); err != nil {
			return err
		}
		reg, err = s.openClusterRegistry()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.Cluster.ConnectTimeout)
		s.presence, err = openClusterPresence(ctx, s.cluster, o.Cluster.PresenceHeartbeat, log)
		cancel()
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		s.closers = append(s.closers, s.presence.close)
	} else {
		reg, err = registry.OpenPebble(filepath.Join(dir, "registry"), registry.PebbleOptions{InMemory: o.InMemory, Logger: log})
		if err != nil {
			return err
		}
	}
	s.Registry = reg
	s.closers = append(s.closers, reg.Close)

	policies, err := o.policies()
	if err != nil {
		return err
	}
	s.Authority, err = auth.New(auth.Config{
		HostName: o.HostName,
		Aliases:  append([]string{"localhost", "127.0.0.1", o.HubName}, o.HostAliases...),
		Policies: policies,
		Registry: reg,
	})
	if err != nil {
		return err
	}
	if err := s.seedDevices(); err != nil {
		return err
	}

	endpoints := map[hub.Kind]hub.Endpoint{}
	for k, e := range o.Endpoints {
		endpoints[k] = e
	}
	s.Hub, err = hub.New(hub.Config{
		HostName:     o.HostName,
		EventHubName: o.EventHubName,
		Authority:    s.Authority,
		Endpoints:    endpoints,
		TokenGrace:   o.TokenGrace,
		Logger:       log,

		RevalidateInterval: o.RevalidateInterval,
		AuthTimeout:        o.AuthTimeout,
		OnPresence:         s.onPresence(),
	})
	if err != nil {
		return err
	}
	s.watchRegistry()
	s.Engine, err = amqp.NewServer(amqp.Config{
		ContainerID: o.HubName,
		Handler:     s.Hub,
		SASL:        s.Hub,
		AllowNoSASL: true, // the Node and C# SDKs send no SASL
		Logger:      log,

		MaxFrameSize:       o.Limits.MaxFrameSize,
		ChannelMax:         o.Limits.ChannelMax,
		HandleMax:          o.Limits.HandleMax,
		MaxLinks:           o.Limits.MaxLinks,
		IdleTimeout:        o.Limits.IdleTimeout,
		HandshakeTimeout:   o.Limits.HandshakeTimeout,
		MaxHandshakes:      o.Limits.MaxHandshakes,
		MaxHandshakesPerIP: o.Limits.MaxHandshakesPerIP,
		MaxWriteBuffer:     o.Limits.MaxWriteBuffer,
	})
	if err != nil {
		return err
	}
	s.REST, err = rest.New(rest.Config{Registry: reg, Auth: s.Authority, Logger: log,
		// Live connections of an identity changed through REST are
		// checked at once, not at the next periodic revalidation.
		OnIdentityChange: func(deviceID, moduleID string) {
			if moduleID == "" {
				s.Hub.RevalidateDevice(deviceID)
			} else {
				s.Hub.RevalidateModule(deviceID, moduleID)
			}
		}})
	if err != nil {
		return err
	}

	tlsCfg, err := s.tlsConfig(dir)
	if err != nil {
		return err
	}
	// Bind every listener before the features start, so redirects and
	// printed endpoints carry the real ports (port 0 picks one).
	var plainLns []net.Listener
	var tlsLn, httpsLn net.Listener
	if a := o.AMQPAddr; a != "off" {
		if plainLns, err = listenLoopback(a); err != nil {
			return fmt.Errorf("plain AMQP listener %s: %w", a, err)
		}
		s.AMQPAddr = plainLns[0].Addr().String()
		for _, ln := range plainLns {
			s.closers = append(s.closers, closeQuiet(ln))
		}
	}
	if a := o.AMQPSAddr; a != "off" {
		if tlsLn, err = tls.Listen("tcp", a, tlsCfg); err != nil {
			return fmt.Errorf("AMQPS listener %s: %w", a, err)
		}
		s.AMQPSAddr = tlsLn.Addr().String()
		s.closers = append(s.closers, closeQuiet(tlsLn))
	}
	if a := o.HTTPSAddr; a != "off" {
		if httpsLn, err = net.Listen("tcp", a); err != nil {
			return fmt.Errorf("HTTPS listener %s: %w", a, err)
		}
		s.HTTPSAddr = httpsLn.Addr().String()
		s.closers = append(s.closers, closeQuiet(httpsLn))
	}

	if err := s.setupFeatures(dir); err != nil {
		return err
	}
	for k, e := range o.Endpoints {
		s.Hub.SetEndpoint(k, e)
	}
	s.REST.AddLiveSource(s.livePresence)

	for _, ln := range plainLns {
		s.serveAMQP(ln)
	}
	if tlsLn != nil {
		s.serveAMQP(tlsLn)
	}
	if httpsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/$iothub/websocket", s.Engine.WebSocketHandler())
		mux.Handle("/$servicebus/websocket", s.Engine.WebSocketHandler())
		mux.Handle("/", s.REST)
		s.https = &http.Server{
			Handler: mux,
			// The HTTP server adds ALPN protocols to its config as it
			// starts: give it its own copy, the AMQPS listener shares tlsCfg.
			TLSConfig:         tlsCfg.Clone(),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.https.ServeTLS(httpsLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("HTTPS server stopped", "err", err)
			}
		}()
	}
	return nil
}

// setupFeatures opens the telemetry log and sets up every feature.
func (s *Server) setupFeatures(dir string) error {
	o := &s.Options
	var lg partlog.Log
	if s.cluster != nil {
		jl, err := s.openClusterLog()
		if err != nil {
			return err
		}
		lg = jl
	} else {
		sl, err := seglog.Open(filepath.Join(dir, "telemetry"), seglog.Options{
			Partitions:     o.Partitions,
			Retention:      o.Retention,
			RetentionBytes: o.RetentionBytes,
			Logger:         o.Logger,
		})
		if err != nil {
			return fmt.Errorf("telemetry log: %w", err)
		}
		lg = sl
	}
	s.Log = lg
	s.closers = append(s.closers, lg.Close)
	env := &hub.Env{
		HubName:      o.HubName,
		HostName:     o.HostName,
		EventHubName: o.EventHubName,
		DataDir:      dir,
		InMemory:     o.InMemory,
		AMQPSPort:    portOf(s.AMQPSAddr),
		AMQPPort:     portOf(s.AMQPAddr),
		Hub:          s.Hub,
		Authority:    s.Authority,
		Registry:     s.Registry,
		REST:         s.REST,
		Log:          lg,
		Logger:       o.Logger,
		Cluster:      s.cluster,
	}
	setups := []struct {
		name  string
		setup func() (*hub.Module, error)
	}{
		{"telemetry", func() (*hub.Module, error) { return telemetry.Setup(env, o.Telemetry) }},
		{"eventhub", func() (*hub.Module, error) { return eventhub.Setup(env, o.EventHub) }},
		{"c2d", func() (*hub.Module, error) { return c2dsvc.Setup(env, o.C2D) }},
		{"twin", func() (*hub.Module, error) { return twin.Setup(env, o.Twin) }},
		{"methods", func() (*hub.Module, error) { return methods.Setup(env, o.Methods) }},
	}
	for _, f := range setups {
		m, err := f.setup()
		if err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		for k, e := range m.Endpoints {
			s.Hub.SetEndpoint(k, e)
		}
		if m.Close != nil {
			s.closers = append(s.closers, m.Close)
		}
	}
	return nil
}

func portOf(addr string) int {
	if addr == "" {
		return 0
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	var n int
	fmt.Sscanf(p, "%d", &n)
	return n
}

// listenLoopback listens on addr; for host "localhost" it listens on both
// 127.0.0.1 and ::1 (same port), since clients resolve localhost to either.
func listenLoopback(addr string) ([]net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host != "localhost" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		return []net.Listener{ln}, nil
	}
	ln4, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return nil, err
	}
	_, p4, _ := net.SplitHostPort(ln4.Addr().String())
	if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", p4)); err == nil {
		return []net.Listener{ln4, ln6}, nil
	}
	// No IPv6 loopback here: IPv4 alone will do.
	return []net.Listener{ln4}, nil
}

func closeQuiet(ln net.Listener) func() error {
	return func() error { ln.Close(); return nil }
}

func (s *Server) serveAMQP(ln net.Listener) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.Engine.Serve(ln); err != nil && !errors.Is(err, amqp.ErrServerClosed) {
			s.Options.Logger.Error("AMQP listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

func (s *Server) tlsConfig(dir string) (*tls.Config, error) {
	o := &s.Options
	if o.TLSCertFile != "" || o.TLSKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate: %w", err)
		}
		s.ClientTLS = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.HostName}
		return tlsutil.ServerConfig(cert), nil
	}
	names := append([]string{o.HostName}, o.TLSNames...)
	cert, caFile, err := tlsutil.EnsureLocalCA(filepath.Join(dir, "tls"), names)
	if err != nil {
		return nil, err
	}
	pool, err := tlsutil.CAPool(caFile)
	if err != nil {
		return nil, err
	}
	s.CAFile = caFile
	s.ClientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: o.HostName}
	return tlsutil.ServerConfig(cert), nil
}

func (o *Options) policies() ([]auth.Policy, error) {
	if len(o.Policies) == 0 {
		return auth.DefaultPolicies(), nil
	}
	var out []auth.Policy
	for _, p := range o.Policies {
		r, err := auth.ParseRights(p.Rights)
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Name, err)
		}
		out = append(out, auth.Policy{Name: p.Name, PrimaryKey: p.PrimaryKey, SecondaryKey: p.SecondaryKey, Rights: r})
	}
	return out, nil
}

func (s *Server) seedDevices() error {
	ctx := context.Background()
	for _, dc := range s.Options.Devices {
		d := registry.Device{DeviceID: dc.ID, Status: registry.StatusEnabled}
		if dc.Disabled {
			d.Status = registry.StatusDisabled
		}
		d.Authentication.Type = registry.AuthSAS
		d.Authentication.SymmetricKey = registry.SymmetricKey{PrimaryKey: dc.PrimaryKey, SecondaryKey: dc.SecondaryKey}
		if _, err := s.Registry.CreateDevice(ctx, d); err != nil && !errors.Is(err, registry.ErrDeviceAlreadyExists) {
			return fmt.Errorf("seeding device %q: %w", dc.ID, err)
		}
		for _, mid := range dc.Modules {
			m := registry.Module{DeviceID: dc.ID, ModuleID: mid}
			if _, err := s.Registry.CreateModule(ctx, m); err != nil && !errors.Is(err, registry.ErrModuleAlreadyExists) {
				return fmt.Errorf("seeding module %q/%q: %w", dc.ID, mid, err)
			}
		}
	}
	return nil
}

// Close shuts the hub down: connections are closed with
// amqp:connection:forced, then the stores close.
func (s *Server) Close() error {
	var first error
	s.stop.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// AMQP first: closing device connections fails REST calls that wait
		// on a device (direct methods) at once, so HTTPS drains quickly.
		if s.Engine != nil {
			s.Engine.Shutdown(ctx)
		}
		if s.https != nil {
			s.https.Shutdown(ctx)
		}
		s.wg.Wait()
		for i := len(s.closers) - 1; i >= 0; i-- {
			if err := s.closers[i](); err != nil && first == nil {
				first = err
			}
		}
		if s.tmpDir != "" {
			os.RemoveAll(s.tmpDir)
		}
	})
	return first
}

// onPresence is the hub's presence hook: in a cluster, changes go to the
// other nodes.
func (s *Server) onPresence() func(deviceID, moduleID string, p hub.Presence) {
	if s.presence == nil {
		return nil
	}
	return s.presence.changed
}

// livePresence fills a device's or module's connection state from the
// hub's view of its connections (this node's, in a cluster).
func (s *Server) livePresence(_ context.Context, deviceID, moduleID string, f rest.LiveFields) {
	p, ok := s.Hub.Presence(deviceID, moduleID)
	if s.presence != nil {
		p, ok = s.presence.merge(deviceID, moduleID, p, ok)
	}
	if !ok {
		return
	}
	*f.ConnectionState = registry.Disconnected
	if p.Connected {
		*f.ConnectionState = registry.Connected
	}
	*f.ConnectionStateUpdatedTime = p.Updated
	*f.LastActivityTime = p.LastActivity
}

// ConnectionStrings are what a newcomer pastes into an SDK.
type ConnectionStrings struct {
	Service   string
	Devices   map[string]string
	EventHub  string
	EmulatorE string // the Event-Hub-compatible endpoint over plain AMQP
}

// ConnectionStrings returns ready connection strings for the hub owner
// policy, each seeded device, and the Event-Hub-compatible endpoint.
func (s *Server) ConnectionStrings(ctx context.Context) (ConnectionStrings, error) {
	o := &s.Options
	owner, ok := s.Authority.Policy(auth.PolicyIoTHubOwner)
	if !ok {
		// Custom policies: use the first with ServiceConnect.
		pols, _ := o.policies()
		for _, p := range pols {
			if p.Rights.Has(auth.ServiceConnect) {
				owner, ok = p, true
				break
			}
		}
	}
	var cs ConnectionStrings
	cs.Devices = map[string]string{}
	if ok {
		cs.Service = fmt.Sprintf("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", o.HostName, owner.Name, owner.PrimaryKey)
		cs.EventHub = fmt.Sprintf("Endpoint=sb://%s/;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s", o.HostName, owner.Name, owner.PrimaryKey, o.EventHubName)
		if s.AMQPAddr != "" {
			_, port, _ := net.SplitHostPort(s.AMQPAddr)
			cs.EmulatorE = fmt.Sprintf("Endpoint=sb://%s:%s/;SharedAccessKeyName=%s;SharedAccessKey=%s;EntityPath=%s;UseDevelopmentEmulator=true", o.HostName, port, owner.Name, owner.PrimaryKey, o.EventHubName)
		}
	}
	for _, dc := range o.Devices {
		d, err := s.Registry.GetDevice(ctx, dc.ID)
		if err != nil {
			return cs, err
		}
		if d.Authentication.SymmetricKey.PrimaryKey != "" {
			cs.Devices[dc.ID] = fmt.Sprintf("HostName=%s;DeviceId=%s;SharedAccessKey=%s", o.HostName, dc.ID, d.Authentication.SymmetricKey.PrimaryKey)
		}
	}
	return cs, nil
}

// DeviceLogin returns the SASL PLAIN user name ({device}@sas.{hub} or
// {device}/modules/{module}@sas.{hub}) and a SAS token signed with the
// identity's primary key, valid for ttl: what a device SDK presents. The
// CLI and tests use it to connect as a device or module (moduleID "").
func (s *Server) DeviceLogin(ctx context.Context, deviceID, moduleID string, ttl time.Duration) (user, token string, err error) {
	host, hubName := s.Options.HostName, s.Options.HubName
	var keyB64, resource string
	if moduleID == "" {
		d, err := s.Registry.GetDevice(ctx, deviceID)
		if err != nil {
			return "", "", err
		}
		keyB64, user, resource = d.Authentication.SymmetricKey.PrimaryKey, deviceID+"@sas."+hubName, host+"/devices/"+deviceID
	} else {
		m, err := s.Registry.GetModule(ctx, deviceID, moduleID)
		if err != nil {
			return "", "", err
		}
		keyB64 = m.Authentication.SymmetricKey.PrimaryKey
		user = deviceID + "/modules/" + moduleID + "@sas." + hubName
		resource = host + "/devices/" + deviceID + "/modules/" + moduleID
	}
	key, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil || len(key) == 0 {
		return "", "", fmt.Errorf("identity %s has no usable primary key", resource)
	}
	return user, sas.Sign(resource, key, "", time.Now().Add(ttl)), nil
}

// DeviceConnectionString returns a device's connection string.
func (s *Server) DeviceConnectionString(ctx context.Context, deviceID string) (string, error) {
	d, err := s.Registry.GetDevice(ctx, deviceID)
	if err != nil {
		return "", err
	}
	if d.Authentication.SymmetricKey.PrimaryKey == "" {
		return "", fmt.Errorf("device %q has no symmetric key", deviceID)
	}
	return fmt.Sprintf("HostName=%s;DeviceId=%s;SharedAccessKey=%s", s.Options.HostName, deviceID, d.Authentication.SymmetricKey.PrimaryKey), nil
}
