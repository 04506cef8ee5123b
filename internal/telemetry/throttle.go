package telemetry

import (
	"fmt"
	"sync/atomic"
	"time"

	"amqphub/amqp"
	"amqphub/internal/hub"
	"amqphub/internal/ratelimit"
)

// ErrCondThrottled is the condition IoT Hub rejects throttled operations
// with. Every SDK maps it to a throttling error and retries with back-off.
const ErrCondThrottled amqp.Condition = "com.microsoft:device-container-throttled"

// ThrottleConfig limits telemetry per device and per connection, so one
// device cannot starve the others. Rates are in messages per second (each
// message of a batch counts); zero turns a limit off. Both are off by
// default. A throttled delivery is rejected with
// com.microsoft:device-container-throttled and nothing of it is stored.
type ThrottleConfig struct {
	// DeviceRate limits each device (its modules included), over all of
	// its connections.
	DeviceRate float64 `yaml:"deviceRate"`
	// DeviceBurst is how many messages a device may send at once after a
	// quiet period; 0 means one second's worth.
	DeviceBurst int `yaml:"deviceBurst"`
	// ConnectionRate limits each AMQP connection, over all the devices it
	// carries (the C# SDK multiplexes devices on one connection).
	ConnectionRate float64 `yaml:"connectionRate"`
	// ConnectionBurst is like DeviceBurst, per connection.
	ConnectionBurst int `yaml:"connectionBurst"`
}

// throttle holds the limiters of an ingest endpoint; nil when off.
type throttle struct {
	devices *ratelimit.Keyed // nil without a device limit
	conn    ratelimit.Limit  // Rate 0 without a connection limit
	now     func() time.Time
	refused atomic.Int64 // deliveries rejected as throttled
}

// connBucketKey is where a connection's bucket lives in its hub.ConnState.
const connBucketKey = "telemetry.throttle"

func newThrottle(cfg ThrottleConfig, now func() time.Time) (*throttle, error) {
	if cfg.DeviceRate == 0 && cfg.ConnectionRate == 0 {
		if cfg.DeviceBurst != 0 || cfg.ConnectionBurst != 0 {
			return nil, fmt.Errorf("telemetry: throttle burst set without a rate")
		}
		return nil, nil
	}
	t := &throttle{now: now}
	if cfg.DeviceRate != 0 {
		k, err := ratelimit.NewKeyed(ratelimit.Limit{Rate: cfg.DeviceRate, Burst: cfg.DeviceBurst})
		if err != nil {
			return nil, fmt.Errorf("telemetry: throttle deviceRate: %w", err)
		}
		t.devices = k
	} else if cfg.DeviceBurst != 0 {
		return nil, fmt.Errorf("telemetry: throttle deviceBurst set without deviceRate")
	}
	if cfg.ConnectionRate != 0 {
		l := ratelimit.Limit{Rate: cfg.ConnectionRate, Burst: cfg.ConnectionBurst}
		if err := l.Validate(); err != nil {
			return nil, fmt.Errorf("telemetry: throttle connectionRate: %w", err)
		}
		t.conn = l
	} else if cfg.ConnectionBurst != 0 {
		return nil, fmt.Errorf("telemetry: throttle connectionBurst set without connectionRate")
	}
	return t, nil
}

// linkThrottle is the throttle state of one device events link.
type linkThrottle struct {
	t      *throttle
	device string
	conn   *ratelimit.Bucket // shared by the connection's links; nil if off
}

// forLink returns the link's throttle, nil when throttling is off (a nil
// *linkThrottle admits everything).
func (t *throttle) forLink(req *hub.AttachRequest) *linkThrottle {
	if t == nil {
		return nil
	}
	lt := &linkThrottle{t: t, device: req.Route.DeviceID}
	if t.conn.Rate > 0 && req.Conn != nil {
		// Attach runs on the connection's reader goroutine, so this
		// get-or-create cannot race with another link of the connection.
		b, _ := req.Conn.Get(connBucketKey).(*ratelimit.Bucket)
		if b == nil {
			b, _ = ratelimit.NewBucket(t.conn) // validated in newThrottle
			req.Conn.Set(connBucketKey, b)
		}
		lt.conn = b
	}
	return lt
}

// allow charges n messages to the connection and the device. The device is
// charged only if the connection admitted them, so a connection's refusal
// does not eat the device's allowance.
func (lt *linkThrottle) allow(n int) bool {
	if lt == nil {
		return true
	}
	now := lt.t.now()
	if lt.conn != nil && !lt.conn.AllowN(now, n) {
		return false
	}
	return lt.t.devices == nil || lt.t.devices.AllowN(lt.device, now, n)
}

// throttled rejects d and reports true if the link is over its limit for n
// messages; the caller then stops processing d.
func (s *sender) throttled(d *amqp.Delivery, n int) bool {
	if s.limit.allow(n) {
		return false
	}
	s.limit.t.refused.Add(1)
	d.Reject(amqp.NewError(ErrCondThrottled, "the device or connection exceeded its telemetry rate limit; retry later"))
	s.trim()
	return true
}
