package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/loadgen"
	"amqphub/internal/server"
)

const benchUsage = `usage: amqphub bench <scenario> [flags]

Scenarios:
  d2c          devices send telemetry; acknowledged msgs/s, MB/s, ack latency
  e2e          devices send at --rate while a consumer reads the Event-Hub-compatible
               endpoint live; send-to-receive latency
  c2d          cloud-to-device sends, device completes, feedback; round trips/s and latency
  connections  open --connections TLS device connections with their links, hold them,
               and report the hub's memory per connection
  read         fill a partition with --messages, then time a consumer catching up

Without --hub or --amqp-url the bench starts a hub in this process (data in a
temporary directory, fsync on). To measure a hub in its own process, start it
with "amqphub serve" and pass --hub (its service connection string), --ca and
--rest-url, and --amqp-url. --generic drives any AMQP 1.0 server instead
(d2c and e2e): --amqp-url amqp[s]://[user:pass@]host:port and --address.
Run "amqphub bench <scenario> -h" for the flags; BENCHMARKS.md has examples.
`

// benchFlags are the bench command's settings.
type benchFlags struct {
	hub      hubFlags
	hubSet   bool
	amqpURL  string
	useTLS   bool
	generic  bool
	address  string
	hubName  string
	ehName   string
	pid      int
	pprof    string
	sources  string
	dataDir  string
	parts    int
	logLevel string

	d2c       loadgen.D2CConfig
	duration  time.Duration
	drain     time.Duration
	hold      time.Duration
	messages  int
	partition int
	credit    int
	links     string
}

func benchCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, benchUsage)
		return errors.New("bench: name a scenario")
	}
	scenario, args := args[0], args[1:]
	var f benchFlags
	fs := flag.NewFlagSet("bench "+scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, benchUsage, "\nFlags:\n"); fs.PrintDefaults() }
	f.hub.register(fs)
	fs.StringVar(&f.amqpURL, "amqp-url", "", "AMQP endpoint: amqp://host:port or amqps://host:port (default: amqps://{HostName}:5671 with --hub); with --generic also the SASL PLAIN login as user:pass@")
	fs.BoolVar(&f.useTLS, "tls", false, "in-process hub: connect over TLS (AMQPS) instead of plain AMQP")
	fs.BoolVar(&f.generic, "generic", false, "drive a generic AMQP 1.0 server (needs --amqp-url and --address)")
	fs.StringVar(&f.address, "address", "", "generic mode: the node to send to (RabbitMQ: /amq/queue/{name})")
	fs.StringVar(&f.hubName, "hub-name", "", "hub name in SASL user names (default: the host name)")
	fs.StringVar(&f.ehName, "event-hub", "", "name of the hub's Event-Hub-compatible entity (default: the hub name; \"amqphub\" for localhost)")
	fs.IntVar(&f.pid, "hub-pid", 0, "process id of the server under test (a hub or broker on this machine): reports its CPU use, and the connections scenario its VmRSS")
	fs.StringVar(&f.pprof, "hub-pprof", "", "connections: base URL of the hub's pprof endpoint (amqphub serve with AMQPHUB_PPROF_ADDR), to split its memory into live heap and stacks")
	fs.StringVar(&f.sources, "source-ips", "", "local addresses to dial from, e.g. 127.0.0.2-127.0.0.9 or 127.0.0.2,127.0.0.3 (each gives ~28k ports)")
	fs.StringVar(&f.dataDir, "data-dir", "", "in-process hub: data directory (default: a temporary one, removed at exit)")
	fs.IntVar(&f.parts, "partitions", 4, "in-process hub: telemetry partitions")
	fs.StringVar(&f.logLevel, "log-level", "warn", "in-process hub: log level")

	fs.IntVar(&f.d2c.Connections, "connections", 0, "device connections (default 4; connections scenario 1000)")
	fs.IntVar(&f.d2c.MessageSize, "size", 256, "message payload bytes")
	fs.Float64Var(&f.d2c.Rate, "rate", 0, "offered messages/s over all connections; 0 = unbounded (e2e default 20000, c2d default unbounded)")
	fs.IntVar(&f.d2c.InFlight, "inflight", 256, "unacknowledged messages per connection (c2d: messages per device not yet received, default 32, at most 40)")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "how long load is offered")
	fs.DurationVar(&f.drain, "drain", 30*time.Second, "how long to wait for outstanding outcomes afterwards")
	fs.BoolVar(&f.d2c.NonDurable, "non-durable", false, "send without the durable header flag")
	fs.StringVar(&f.d2c.Client, "client", loadgen.ClientGoAMQP, "AMQP client: go-amqp (the Azure SDK's library) or raw (the bench's own pipelined client)")
	fs.DurationVar(&f.hold, "hold", 10*time.Second, "connections: how long to hold the connections open")
	fs.StringVar(&f.links, "links", "events", "connections: links per device, comma-separated: events, c2d")
	fs.IntVar(&f.messages, "messages", 1000000, "read: messages to fill the partition with")
	fs.IntVar(&f.partition, "partition", 0, "read: the partition to fill and read")
	fs.IntVar(&f.credit, "credit", 0, "consumer link credit (default: 5000 for read, 1000 for e2e)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) {
		set[fl.Name] = true
		if fl.Name == "hub" || fl.Name == "amqp-url" || fl.Name == "rest-url" {
			f.hubSet = true
		}
	})
	f.d2c.Duration, f.d2c.Drain = f.duration, f.drain

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tg, inproc, cleanup, err := f.target(ctx, stderr)
	if err != nil {
		return err
	}
	defer cleanup()
	if inproc == nil {
		tg.HubPID = f.pid
	}

	progress := stderr
	if f.hub.json {
		progress = nil
	}
	f.d2c.Progress = progress
	var rep *loadgen.Report
	switch scenario {
	case "d2c":
		rep, err = loadgen.RunD2C(ctx, tg, f.d2c)
	case "e2e":
		cfg := loadgen.E2EConfig{D2CConfig: f.d2c, Credit: f.credit}
		if cfg.Rate == 0 {
			cfg.Rate = 20000
		}
		rep, err = loadgen.RunE2E(ctx, tg, cfg)
	case "c2d":
		cfg := loadgen.C2DConfig{
			Devices: f.d2c.Connections, MessageSize: f.d2c.MessageSize, Rate: f.d2c.Rate,
			Duration: f.duration, Drain: f.drain, Progress: progress,
		}
		if set["inflight"] {
			cfg.InFlight = f.d2c.InFlight
		}
		rep, err = loadgen.RunC2D(ctx, tg, cfg)
	case "connections":
		cfg := loadgen.ConnectionsConfig{
			Connections: f.d2c.Connections, Hold: f.hold, Client: f.d2c.Client,
			Links: strings.Split(f.links, ","), Progress: progress,
		}
		cfg.Memory, cfg.MemorySource, err = memorySource(f.pid, inproc)
		if err != nil {
			return err
		}
		if f.pprof != "" {
			cfg.Breakdown = loadgen.PprofMemory(f.pprof)
		}
		rep, err = loadgen.RunConnections(ctx, tg, cfg)
	case "read":
		rep, err = loadgen.RunRead(ctx, tg, loadgen.ReadConfig{
			Messages: f.messages, MessageSize: f.d2c.MessageSize, Partition: f.partition,
			Credit: f.credit, Fill: f.d2c, Progress: progress,
		})
	default:
		fmt.Fprint(stderr, benchUsage)
		return fmt.Errorf("bench: unknown scenario %q", scenario)
	}
	if err != nil {
		return fmt.Errorf("bench %s: %w", scenario, err)
	}
	if inproc != nil {
		rep.Target = "in-process amqphub, " + rep.Target
	}
	rep.LoadAverage = loadgen.LoadAverage()
	if f.hub.json {
		return rep.WriteJSON(stdout)
	}
	return rep.WriteText(stdout)
}

// target builds the load generator's target: an in-process hub, a hub in
// another process, or a generic AMQP server.
func (f *benchFlags) target(ctx context.Context, stderr io.Writer) (*loadgen.Target, *server.Server, func(), error) {
	nothing := func() {}
	sources, err := parseSources(f.sources)
	if err != nil {
		return nil, nil, nothing, err
	}
	if f.generic {
		if f.amqpURL == "" || f.address == "" {
			return nil, nil, nothing, errors.New("bench: --generic needs --amqp-url and --address")
		}
		u, err := parseAMQPURL(f.amqpURL)
		if err != nil {
			return nil, nil, nothing, err
		}
		tg := &loadgen.Target{Addr: u.Host, SourceAddrs: sources, Generic: &loadgen.Generic{Address: f.address}}
		if u.User != nil {
			tg.Generic.User = u.User.Username()
			tg.Generic.Password, _ = u.User.Password()
		}
		if u.Scheme == "amqps" {
			if tg.TLS, err = f.hub.tlsConfig(); err != nil {
				return nil, nil, nothing, err
			}
			if tg.TLS == nil {
				tg.TLS = systemTLS()
			}
		}
		return tg, nil, nothing, nil
	}
	if f.hubSet {
		return f.remoteHub(sources)
	}
	return f.inProcessHub(stderr, sources)
}

func (f *benchFlags) remoteHub(sources []netip.Addr) (*loadgen.Target, *server.Server, func(), error) {
	nothing := func() {}
	cs, err := client.ParseServiceConnectionString(f.hub.connStr)
	if err != nil {
		return nil, nil, nothing, fmt.Errorf("bench: --hub: %w", err)
	}
	reg, err := f.hub.registry()
	if err != nil {
		return nil, nil, nothing, err
	}
	amqpURL := f.amqpURL
	if amqpURL == "" {
		amqpURL = "amqps://" + net.JoinHostPort(cs.HostName, "5671")
	}
	u, err := parseAMQPURL(amqpURL)
	if err != nil {
		return nil, nil, nothing, err
	}
	tg := &loadgen.Target{
		Addr:        u.Host,
		HostName:    cs.HostName,
		SourceAddrs: sources,
		Hub: &loadgen.IoTHub{
			HostName:     cs.HostName,
			HubName:      f.hubName,
			EventHubName: f.ehName,
			Registry:     restRegistry{reg},
			PolicyName:   cs.SharedAccessKeyName,
			PolicyKey:    cs.SharedAccessKey,
		},
	}
	if u.Scheme == "amqps" {
		if tg.TLS, err = f.hub.tlsConfig(); err != nil {
			return nil, nil, nothing, err
		}
		if tg.TLS == nil {
			tg.TLS = systemTLS()
		}
	}
	return tg, nil, nothing, nil
}

func (f *benchFlags) inProcessHub(stderr io.Writer, sources []netip.Addr) (*loadgen.Target, *server.Server, func(), error) {
	nothing := func() {}
	dir := f.dataDir
	var tmp string
	if dir == "" {
		var err error
		if tmp, err = os.MkdirTemp("", "amqphub-bench-"); err != nil {
			return nil, nil, nothing, err
		}
		dir = tmp
	}
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		return nil, nil, nothing, err
	}
	s, err := server.Start(server.Options{
		DataDir:    dir,
		AMQPAddr:   "127.0.0.1:0",
		AMQPSAddr:  "127.0.0.1:0",
		HTTPSAddr:  "off",
		Partitions: f.parts,
		Logger:     log,
	})
	if err != nil {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
		return nil, nil, nothing, fmt.Errorf("bench: starting the in-process hub: %w", err)
	}
	cleanup := func() {
		s.Close()
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}
	tg := &loadgen.Target{
		Addr:        s.AMQPAddr,
		HostName:    s.Options.HostName,
		SourceAddrs: sources,
		Hub: &loadgen.IoTHub{
			HostName:     s.Options.HostName,
			HubName:      f.hubName,
			EventHubName: s.Options.EventHubName,
			Registry:     loadgen.StoreRegistry(s.Registry),
			PolicyName:   auth.PolicyIoTHubOwner,
			PolicyKey:    auth.DevIoTHubOwnerPrimaryKey,
		},
	}
	if f.useTLS {
		tg.Addr, tg.TLS = s.AMQPSAddr, s.ClientTLS
	}
	slog.Debug("bench: in-process hub", "amqp", s.AMQPAddr, "amqps", s.AMQPSAddr, "data", dir)
	return tg, s, cleanup, nil
}

func parseAMQPURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("bench: --amqp-url: %w", err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return nil, fmt.Errorf("bench: --amqp-url %q: scheme must be amqp or amqps", s)
	}
	if u.Port() == "" {
		port := "5672"
		if u.Scheme == "amqps" {
			port = "5671"
		}
		u.Host = net.JoinHostPort(u.Hostname(), port)
	}
	return u, nil
}

// parseSources reads "a,b,c" and "first-last" ranges of IPv4 addresses.
func parseSources(s string) ([]netip.Addr, error) {
	if s == "" {
		return nil, nil
	}
	var out []netip.Addr
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := netip.ParseAddr(lo)
		if err != nil {
			return nil, fmt.Errorf("bench: --source-ips: %w", err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(hi)
		if err != nil {
			return nil, fmt.Errorf("bench: --source-ips: %w", err)
		}
		if b.Less(a) || !a.Is4() || !b.Is4() {
			return nil, fmt.Errorf("bench: --source-ips: %q is not an ascending IPv4 range", part)
		}
		for x := a; ; x = x.Next() {
			out = append(out, x)
			if x == b || len(out) > 1024 {
				break
			}
		}
	}
	if len(out) > 1024 {
		return nil, errors.New("bench: --source-ips: more than 1024 addresses")
	}
	return out, nil
}

// memorySource picks where the connections scenario reads the hub's
// memory: /proc/<pid>/status of a hub in its own process, or this
// process's memory statistics for an in-process hub.
func memorySource(pid int, inproc *server.Server) (func() (int64, error), string, error) {
	if pid > 0 {
		return func() (int64, error) { return loadgen.ProcessRSS(pid) }, fmt.Sprintf("VmRSS of pid %d", pid), nil
	}
	if inproc != nil {
		return loadgen.InProcessMemory, "this process's Go memory (hub and load generator together)", nil
	}
	return nil, "", nil
}

// restRegistry creates bench devices through a hub's registry REST API
// (a hub in another process, or Azure IoT Hub).
type restRegistry struct{ r *client.Registry }

func (r restRegistry) EnsureDevice(ctx context.Context, id, key string) (string, error) {
	d := client.Device{DeviceID: id, Status: "enabled"}
	d.Authentication.Type = "sas"
	d.Authentication.SymmetricKey = client.SymmetricKey{PrimaryKey: key, SecondaryKey: key}
	got, err := r.r.CreateDevice(ctx, d)
	if errors.Is(err, client.ErrDeviceAlreadyExists) {
		got, err = r.r.GetDevice(ctx, id)
	}
	if err != nil {
		return "", err
	}
	return got.Authentication.SymmetricKey.PrimaryKey, nil
}

func systemTLS() *tls.Config { return &tls.Config{MinVersion: tls.VersionTLS12} }
