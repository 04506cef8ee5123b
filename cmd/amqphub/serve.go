package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"amqphub/internal/server"
)

// Development device keys: documented, public, for local use only.
const (
	DevDevice1PrimaryKey   = "YW1xcGh1Yi1kZXYvZGV2aWNlMS9wcmltYXJ5Li4u"
	DevDevice1SecondaryKey = "YW1xcGh1Yi1kZXYvZGV2aWNlMS9zZWNvbmRhcnku"
	DevDevice2PrimaryKey   = "YW1xcGh1Yi1kZXYvZGV2aWNlMi9wcmltYXJ5Li4u"
	DevDevice2SecondaryKey = "YW1xcGh1Yi1kZXYvZGV2aWNlMi9zZWNvbmRhcnku"
)

// defaultDevices are seeded when the configuration names none, so a
// newcomer has devices to paste connection strings for.
var defaultDevices = []server.DeviceConfig{
	{ID: "device1", PrimaryKey: DevDevice1PrimaryKey, SecondaryKey: DevDevice1SecondaryKey},
	{ID: "device2", PrimaryKey: DevDevice2PrimaryKey, SecondaryKey: DevDevice2SecondaryKey},
}

// loadOptions applies, in increasing precedence: defaults, the config file,
// AMQPHUB_* environment variables, then flags.
func loadOptions(args []string, stderr io.Writer) (server.Options, string, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		config    = fs.String("config", os.Getenv("AMQPHUB_CONFIG"), "config file (YAML); env AMQPHUB_CONFIG")
		dataDir   = fs.String("data-dir", "", "data directory (default ./amqphub-data); env AMQPHUB_DATA_DIR")
		inMemory  = fs.Bool("in-memory", false, "keep everything in memory (tests, CI); env AMQPHUB_IN_MEMORY")
		hubName   = fs.String("hub-name", "", "hub name (default amqphub); env AMQPHUB_HUB_NAME")
		hostName  = fs.String("host-name", "", "host name clients use (default localhost); env AMQPHUB_HOST_NAME")
		amqpAddr  = fs.String("amqp-addr", "", "plain AMQP address (default localhost:5672, loopback only; \"off\" disables); env AMQPHUB_AMQP_ADDR")
		amqpsAddr = fs.String("amqps-addr", "", "AMQPS address (default :5671); env AMQPHUB_AMQPS_ADDR")
		httpsAddr = fs.String("https-addr", "", "HTTPS address for WebSockets and REST (default :443); env AMQPHUB_HTTPS_ADDR")
		tlsCert   = fs.String("tls-cert", "", "TLS certificate file (default: a generated local CA); env AMQPHUB_TLS_CERT")
		tlsKey    = fs.String("tls-key", "", "TLS key file; env AMQPHUB_TLS_KEY")
		parts     = fs.Int("partitions", 0, "telemetry partitions, fixed at creation (default 4); env AMQPHUB_PARTITIONS")
		logLevel  = fs.String("log-level", "", "debug, info, warn or error (default info); env AMQPHUB_LOG_LEVEL")
		cluster   = fs.String("cluster", "", "NATS JetStream URLs, comma-separated: run as one node of a cluster (no local state); env AMQPHUB_CLUSTER")
		nodeID    = fs.String("node-id", "", "this node's name in the cluster (default random); env AMQPHUB_NODE_ID")
		replicas  = fs.Int("replicas", 0, "replicas of the cluster's streams and buckets (default 3 with 3+ NATS servers, else 1); env AMQPHUB_REPLICAS")
		aliases   = fs.String("host-aliases", "", "further host names SAS tokens may name, comma-separated; env AMQPHUB_HOST_ALIASES")
	)
	if err := fs.Parse(args); err != nil {
		return server.Options{}, "", err
	}
	var o server.Options
	if *config != "" {
		b, err := os.ReadFile(*config)
		if err != nil {
			return o, "", fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&o); err != nil && !errors.Is(err, io.EOF) {
			return o, "", fmt.Errorf("config %s: %w", *config, err)
		}
	}
	str := func(dst *string, env, flagVal string) {
		if v := os.Getenv(env); v != "" {
			*dst = v
		}
		if flagVal != "" {
			*dst = flagVal
		}
	}
	str(&o.DataDir, "AMQPHUB_DATA_DIR", *dataDir)
	str(&o.HubName, "AMQPHUB_HUB_NAME", *hubName)
	str(&o.HostName, "AMQPHUB_HOST_NAME", *hostName)
	str(&o.AMQPAddr, "AMQPHUB_AMQP_ADDR", *amqpAddr)
	str(&o.AMQPSAddr, "AMQPHUB_AMQPS_ADDR", *amqpsAddr)
	str(&o.HTTPSAddr, "AMQPHUB_HTTPS_ADDR", *httpsAddr)
	str(&o.TLSCertFile, "AMQPHUB_TLS_CERT", *tlsCert)
	str(&o.TLSKeyFile, "AMQPHUB_TLS_KEY", *tlsKey)
	str(&o.Cluster.URLs, "AMQPHUB_CLUSTER", *cluster)
	str(&o.Cluster.NodeID, "AMQPHUB_NODE_ID", *nodeID)
	var aliasList string
	str(&aliasList, "AMQPHUB_HOST_ALIASES", *aliases)
	for _, a := range strings.Split(aliasList, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.HostAliases = append(o.HostAliases, a)
		}
	}
	if v := os.Getenv("AMQPHUB_REPLICAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return o, "", fmt.Errorf("AMQPHUB_REPLICAS=%q: %w", v, err)
		}
		o.Cluster.Replicas = n
	}
	if *replicas != 0 {
		o.Cluster.Replicas = *replicas
	}
	if v := os.Getenv("AMQPHUB_IN_MEMORY"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return o, "", fmt.Errorf("AMQPHUB_IN_MEMORY=%q: %w", v, err)
		}
		o.InMemory = b
	}
	if *inMemory {
		o.InMemory = true
	}
	if v := os.Getenv("AMQPHUB_PARTITIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return o, "", fmt.Errorf("AMQPHUB_PARTITIONS=%q: %w", v, err)
		}
		o.Partitions = n
	}
	if *parts != 0 {
		o.Partitions = *parts
	}
	if o.Partitions < 0 || o.Partitions > 32 {
		return o, "", fmt.Errorf("partitions must be 1 to 32, got %d", o.Partitions)
	}
	level := os.Getenv("AMQPHUB_LOG_LEVEL")
	if *logLevel != "" {
		level = *logLevel
	}
	if len(o.Devices) == 0 {
		o.Devices = defaultDevices
	}
	return o, level, nil
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if level != "" {
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("log level %q: %w", level, err)
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func serve(args []string) error {
	o, level, err := loadOptions(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	log, err := newLogger(level, os.Stderr)
	if err != nil {
		return err
	}
	o.Logger = log
	httpsDefault := o.HTTPSAddr == ""
	s, err := server.Start(o)
	if err != nil && httpsDefault && errors.Is(err, syscall.EACCES) {
		// Port 443 needs privileges. Serve HTTPS on 8443 rather than not
		// at all; the Node AmqpWs transport and azure-iothub REST need 443.
		log.Warn("cannot bind :443 (not root?); serving HTTPS on :8443 instead. Run as root or grant CAP_NET_BIND_SERVICE for clients that only dial 443.")
		o.HTTPSAddr = ":8443"
		s, err = server.Start(o)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	if err := printBanner(os.Stdout, s); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	log.Info("shutting down: closing connections with amqp:connection:forced")
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("shutdown took longer than 30 s")
	}
}

func printBanner(w io.Writer, s *server.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := s.ConnectionStrings(ctx)
	if err != nil {
		return err
	}
	o := s.Options
	fmt.Fprintf(w, "amqphub %q is ready (host name %s)\n\n", o.HubName, o.HostName)
	listen := func(name, addr string) {
		if addr == "" {
			addr = "off"
		}
		fmt.Fprintf(w, "  %-28s %s\n", name, addr)
	}
	listen("AMQP over TLS", s.AMQPSAddr)
	listen("HTTPS (AMQP/WebSocket, REST)", s.HTTPSAddr)
	listen("plain AMQP (development)", s.AMQPAddr)
	if o.Cluster.Enabled() {
		fmt.Fprintf(w, "  %-28s node %s on NATS JetStream (%d replicas, prefix %s)\n", "data", o.Cluster.NodeID, o.Cluster.Replicas, o.Cluster.Prefix)
	} else if o.InMemory {
		fmt.Fprintf(w, "  %-28s %s\n", "data", "in memory (lost at exit)")
	} else {
		fmt.Fprintf(w, "  %-28s %s\n", "data", o.DataDir)
	}
	if s.CAFile != "" {
		fmt.Fprintf(w, "  %-28s %s\n", "CA certificate", s.CAFile)
		fmt.Fprintf(w, "      Node.js: export NODE_EXTRA_CA_CERTS=%s\n", s.CAFile)
	}
	fmt.Fprintf(w, "\nService (iothubowner):\n  %s\n", cs.Service)
	if len(cs.Devices) > 0 {
		fmt.Fprintln(w, "\nDevices:")
		for _, d := range o.Devices {
			if c, ok := cs.Devices[d.ID]; ok {
				fmt.Fprintf(w, "  %s\n", c)
			}
		}
	}
	fmt.Fprintf(w, "\nEvent-Hub-compatible endpoint:\n  %s\n", cs.EventHub)
	if cs.EmulatorE != "" {
		fmt.Fprintf(w, "  %s\n", cs.EmulatorE)
	}
	fmt.Fprintln(w, "\nThese keys are public development keys: configure your own for anything else.")
	return nil
}
