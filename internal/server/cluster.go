package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/hub"
	"amqphub/internal/registry"
	"amqphub/internal/registry/jsregistry"
	jslog "amqphub/store/partlog/jetstream"
)

// ClusterOptions run the hub as one node of several on a NATS JetStream
// cluster. Every node serves every listener and keeps no durable state:
// telemetry, C2D, feedback, twins, the registry, consumer groups and
// reader ownership live in JetStream, and nodes coordinate through NATS.
type ClusterOptions struct {
	// URLs are the NATS servers, comma-separated ("nats://n1:4222,nats://n2:4222").
	// Empty means the embedded single-node mode.
	URLs string `yaml:"urls"`
	// NodeID names this node in leases and logs (default: random).
	NodeID string `yaml:"nodeId"`
	// Replicas is the replication factor of the hub's streams and buckets
	// (default 3 when the NATS cluster has at least 3 servers, else 1).
	// A node applies it to the streams and buckets that exist already, so
	// every node should be given the same value.
	Replicas int `yaml:"replicas"`
	// Prefix namespaces the hub's streams, buckets and subjects (default
	// AMQPHUB), so that several hubs can share one NATS account.
	Prefix string `yaml:"prefix"`
	// CredsFile is a NATS credentials file, if the cluster needs one
	// (user and password may also be given in the URLs).
	CredsFile string `yaml:"credsFile"`
	// ConnectTimeout bounds the start: connecting and finding JetStream
	// ready (default 30 s; a cluster may still be electing its leader).
	ConnectTimeout time.Duration `yaml:"connectTimeout"`
	// PresenceHeartbeat is how often a node tells the others it is alive
	// (default 5 s); the connections of a node silent for three of them
	// no longer count in the registry's connectionState.
	PresenceHeartbeat time.Duration `yaml:"presenceHeartbeat"`
}

// clusterAckTimeout bounds the wait for a telemetry append's
// acknowledgement in a cluster (see openClusterLog).
const clusterAckTimeout = 3 * time.Second

// Enabled reports whether the hub runs as a cluster node.
func (c ClusterOptions) Enabled() bool { return strings.TrimSpace(c.URLs) != "" }

// connectCluster connects to NATS and waits for JetStream.
func (s *Server) connectCluster() (*hub.Cluster, error) {
	o := &s.Options
	co := o.Cluster
	if co.Prefix == "" {
		co.Prefix = "AMQPHUB"
	}
	if co.NodeID == "" {
		var b [6]byte
		rand.Read(b[:])
		co.NodeID = hex.EncodeToString(b[:])
	}
	if co.ConnectTimeout <= 0 {
		co.ConnectTimeout = 30 * time.Second
	}
	for _, r := range co.Prefix {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return nil, fmt.Errorf("cluster prefix %q: only letters, digits, '-' and '_' are allowed", co.Prefix)
		}
	}
	log := o.Logger.With("node", co.NodeID)
	opts := []nats.Option{
		nats.Name("amqphub " + co.NodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("cluster: disconnected from NATS", "err", err)
			// Acks of telemetry published on the lost connection never
			// come: fail those appends now so devices retry at once.
			if lg := s.clusterLog.Load(); lg != nil {
				lg.FailInFlight(fmt.Errorf("disconnected from NATS: %v", err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("cluster: reconnected to NATS", "server", nc.ConnectedUrlRedacted())
		}),
	}
	if co.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(co.CredsFile))
	}
	nc, err := nats.Connect(co.URLs, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS %s: %w", redactURLs(co.URLs), err)
	}
	s.closers = append(s.closers, func() error { nc.Close(); return nil })
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), co.ConnectTimeout)
	defer cancel()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		_, last = js.AccountInfo(actx)
		acancel()
		if last == nil {
			break
		}
		if errors.Is(last, jetstream.ErrJetStreamNotEnabled) || errors.Is(last, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("cluster: NATS at %s: %w", redactURLs(co.URLs), last)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: JetStream at %s not ready within %v: %w", redactURLs(co.URLs), co.ConnectTimeout, last)
		case <-time.After(100 * time.Millisecond): // poll: the cluster elects a meta leader
		}
	}
	if co.Replicas == 0 {
		// The servers named in the URLs and those the cluster announced:
		// right after connecting the announcement may not have come yet.
		known := max(len(nc.Servers()), len(strings.Split(co.URLs, ",")))
		co.Replicas = min(3, known)
		if co.Replicas == 2 {
			co.Replicas = 1 // R2 cannot survive the loss of either server
		}
	}
	if co.Replicas < 1 || co.Replicas > 5 {
		return nil, fmt.Errorf("cluster replicas must be 1 to 5, got %d", co.Replicas)
	}
	o.Cluster = co
	log.Info("cluster: connected", "nats", nc.ConnectedUrlRedacted(), "replicas", co.Replicas, "prefix", co.Prefix)
	return &hub.Cluster{NodeID: co.NodeID, Conn: nc, JS: js, Replicas: co.Replicas, Prefix: co.Prefix}, nil
}

// redactURLs drops user information from NATS URLs for messages.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if at := strings.LastIndex(p, "@"); at >= 0 {
			if scheme := strings.Index(p, "://"); scheme >= 0 && scheme < at {
				parts[i] = p[:scheme+3] + "***" + p[at:]
			}
		}
	}
	return strings.Join(parts, ",")
}

// openClusterRegistry opens the registry bucket and keeps live
// connections current with changes made on any node.
func (s *Server) openClusterRegistry() (registry.Store, error) {
	c := s.cluster
	ctx, cancel := context.WithTimeout(context.Background(), s.Options.Cluster.ConnectTimeout)
	defer cancel()
	reg, err := jsregistry.Open(ctx, c.JS, jsregistry.Options{
		Bucket:   c.Bucket("registry"),
		Replicas: c.Replicas,
		Logger:   s.Options.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster registry: %w", err)
	}
	return reg, nil
}

// watchRegistry re-checks the live connections of an identity whenever
// any node changes it (disabled, keys regenerated, deleted).
func (s *Server) watchRegistry() {
	reg, ok := s.Registry.(*jsregistry.Store)
	if !ok {
		return
	}
	cancel := reg.OnChange(func(deviceID, moduleID string) {
		if moduleID == "" {
			s.Hub.RevalidateDevice(deviceID)
		} else {
			s.Hub.RevalidateModule(deviceID, moduleID)
		}
	})
	s.closers = append(s.closers, func() error { cancel(); return nil })
}

// openClusterLog opens the telemetry partitions as JetStream streams.
func (s *Server) openClusterLog() (*jslog.Log, error) {
	o := &s.Options
	c := s.cluster
	ctx, cancel := context.WithTimeout(context.Background(), o.Cluster.ConnectTimeout)
	defer cancel()
	lg, err := jslog.Open(ctx, c.Conn, jslog.Options{
		Partitions:     o.Partitions,
		StreamPrefix:   c.Bucket("telemetry_"),
		SubjectPrefix:  c.Subject("telemetry"),
		Replicas:       c.Replicas,
		Retention:      o.Retention,
		RetentionBytes: o.RetentionBytes,
		// A partition whose stream leader died answers nothing until its
		// replicas elect another (seconds): fail those appends soon so
		// devices resend, rather than after the 10 s default. Loaded acks
		// take tens of milliseconds, far below this.
		AckTimeout: clusterAckTimeout,
		Logger:     o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster telemetry log: %w", err)
	}
	s.clusterLog.Store(lg)
	return lg, nil
}
