package loadgen

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/internal/sas"
)

// Login is a SASL login. An empty User means SASL ANONYMOUS.
type Login struct {
	User     string
	Password string
}

// Identity is what one device connection presents and where it sends.
type Identity struct {
	Login
	// DeviceID is the device's id ("" in generic mode).
	DeviceID string
	// EventsAddress is the target address of device-to-cloud messages.
	EventsAddress string
	// C2DAddress is the source address the device receives
	// cloud-to-device messages from ("" in generic mode).
	C2DAddress string
}

// Target says how to reach the server under test and which dialect it
// speaks. Exactly one of Hub and Generic is set.
type Target struct {
	// Addr is the host:port of the AMQP (or AMQPS) listener.
	Addr string
	// TLS, when not nil, runs every connection over TLS with this config.
	TLS *tls.Config
	// HostName goes into each AMQP open frame; IoT Hub routes and
	// authorizes by it. Default: the host of Addr.
	HostName string
	// SourceAddrs are local addresses connections are dialled from in
	// turn; each gives a separate range of ephemeral ports, which is how
	// more than ~28k connections to one listener are possible. Empty: the
	// system picks.
	SourceAddrs []netip.Addr

	// HubPID is the server's process id when it runs on this machine; the
	// reports then show its CPU use (and the connections scenario may read
	// its memory). 0 when unknown or in-process.
	HubPID int

	// Hub makes the target an IoT Hub (amqphub or Azure): devices log in
	// with SAS tokens and send to /devices/{id}/messages/events.
	Hub *IoTHub
	// Generic makes the target any AMQP 1.0 server: every connection uses
	// the same login and address.
	Generic *Generic

	next atomic.Uint64 // round-robin over SourceAddrs
}

// Generic describes a plain AMQP 1.0 server (RabbitMQ, ActiveMQ, ...).
type Generic struct {
	Login
	// Address is the node messages are sent to (for RabbitMQ's AMQP 1.0
	// plugin, /amq/queue/{name} for an existing queue).
	Address string
}

// DeviceRegistry creates the bench's devices.
type DeviceRegistry interface {
	// EnsureDevice creates the device with key as its primary key if it
	// does not exist, and returns the primary key it has.
	EnsureDevice(ctx context.Context, deviceID, key string) (string, error)
}

// IoTHub describes an IoT Hub (amqphub or Azure) under test.
type IoTHub struct {
	// HostName is the hub's host name: the audience of SAS tokens.
	HostName string
	// HubName goes into SASL PLAIN user names ({id}@sas.{HubName}).
	// Default: HostName, which amqphub accepts too.
	HubName string
	// Registry creates the bench devices; nil uses existing devices whose
	// key is DeviceKey.
	Registry DeviceRegistry
	// DevicePrefix names the bench devices ({prefix}{n}). Default "bench-".
	DevicePrefix string
	// DeviceKey is the base64 primary key new bench devices get. Default:
	// a fixed development key, so reruns reuse the devices.
	DeviceKey string
	// PolicyName and PolicyKey are a shared access policy with
	// ServiceConnect, for the service side (the Event-Hub-compatible
	// consumer, cloud-to-device sends).
	PolicyName string
	PolicyKey  string
	// EventHubName is the entity of the Event-Hub-compatible endpoint.
	// Default: the first label of HubName, or "amqphub" (amqphub's default
	// hub name) when that is "localhost" or an IP address.
	EventHubName string
	// TokenTTL is the lifetime of the SAS tokens. Default 24 h.
	TokenTTL time.Duration
}

// defaultDeviceKey is the primary key of bench devices: public, for
// benchmarking only.
var defaultDeviceKey = base64.StdEncoding.EncodeToString([]byte("amqphub-bench/device/primary-key"))

func (h *IoTHub) hubName() string {
	if h.HubName != "" {
		return h.HubName
	}
	return h.HostName
}

func (h *IoTHub) entity() string {
	if h.EventHubName != "" {
		return h.EventHubName
	}
	if h.hubName() == "localhost" {
		return "amqphub"
	}
	if _, err := netip.ParseAddr(h.hubName()); err == nil {
		return "amqphub"
	}
	name, _, _ := strings.Cut(h.hubName(), ".")
	return name
}

func (h *IoTHub) ttl() time.Duration {
	if h.TokenTTL > 0 {
		return h.TokenTTL
	}
	return 24 * time.Hour
}

// DeviceID returns the id of the i-th bench device.
func (h *IoTHub) DeviceID(i int) string {
	p := h.DevicePrefix
	if p == "" {
		p = "bench-"
	}
	return fmt.Sprintf("%s%06d", p, i)
}

// ServiceLogin returns the SASL PLAIN login of the service policy.
func (h *IoTHub) ServiceLogin() (Login, error) {
	if h.PolicyName == "" || h.PolicyKey == "" {
		return Login{}, errors.New("loadgen: the hub target has no service policy (PolicyName, PolicyKey)")
	}
	k, err := base64.StdEncoding.DecodeString(h.PolicyKey)
	if err != nil {
		return Login{}, fmt.Errorf("loadgen: policy key is not base64: %w", err)
	}
	return Login{
		User:     h.PolicyName + "@sas.root." + h.hubName(),
		Password: sas.Sign(h.HostName, k, h.PolicyName, time.Now().Add(h.ttl())),
	}, nil
}

// devices creates (when missing) the bench devices first..first+n-1 and
// returns their identities with fresh SAS tokens.
func (h *IoTHub) devices(ctx context.Context, first, n int) ([]Identity, error) {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = first + i
	}
	return h.devicesAt(ctx, idx)
}

// devicesAt is devices for the bench devices with the given numbers.
func (h *IoTHub) devicesAt(ctx context.Context, idx []int) ([]Identity, error) {
	n := len(idx)
	key := h.DeviceKey
	if key == "" {
		key = defaultDeviceKey
	}
	out := make([]Identity, n)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	var next atomic.Int64
	// Registries answer in about a millisecond; a few parallel requests
	// make thousands of devices take seconds, not minutes.
	for range min(16, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				id := h.DeviceID(idx[i])
				k := key
				if h.Registry != nil {
					var err error
					if k, err = h.Registry.EnsureDevice(ctx, id, key); err != nil {
						select {
						case errs <- fmt.Errorf("loadgen: creating device %s: %w", id, err):
						default:
						}
						return
					}
				}
				raw, err := base64.StdEncoding.DecodeString(k)
				if err != nil {
					select {
					case errs <- fmt.Errorf("loadgen: key of device %s is not base64: %w", id, err):
					default:
					}
					return
				}
				out[i] = Identity{
					Login: Login{
						User:     id + "@sas." + h.hubName(),
						Password: sas.Sign(h.HostName+"/devices/"+id, raw, "", time.Now().Add(h.ttl())),
					},
					DeviceID:      id,
					EventsAddress: "/devices/" + id + "/messages/events",
					C2DAddress:    "/devices/" + id + "/messages/devicebound",
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// identities returns the logins of n device connections.
func (t *Target) identities(ctx context.Context, n int) ([]Identity, error) {
	switch {
	case t.Hub != nil && t.Generic != nil:
		return nil, errors.New("loadgen: a target is either an IoT hub or a generic AMQP server, not both")
	case t.Hub != nil:
		return t.Hub.devices(ctx, 0, n)
	case t.Generic != nil:
		if t.Generic.Address == "" {
			return nil, errors.New("loadgen: a generic target needs an address to send to")
		}
		out := make([]Identity, n)
		for i := range out {
			out[i] = Identity{Login: t.Generic.Login, EventsAddress: t.Generic.Address}
		}
		return out, nil
	}
	return nil, errors.New("loadgen: the target has neither Hub nor Generic set")
}

func (t *Target) hostName() string {
	if t.HostName != "" {
		return t.HostName
	}
	host, _, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return t.Addr
	}
	return host
}

// String describes the target for reports.
func (t *Target) String() string {
	scheme := "amqp"
	if t.TLS != nil {
		scheme = "amqps"
	}
	kind := "generic"
	if t.Hub != nil {
		kind = "iothub"
	}
	return fmt.Sprintf("%s://%s (%s)", scheme, t.Addr, kind)
}
