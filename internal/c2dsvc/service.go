package c2dsvc

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
	"amqphub/internal/telemetry"
	"amqphub/store/c2d"
)

// condArgumentError is IoT Hub's condition for a bad request; the Node
// SDKs map it to ArgumentError, C# to ArgumentException.
const condArgumentError amqp.Condition = "com.microsoft:argument-error"

// AckProperty is the application property that asks for feedback.
const AckProperty = "iothub-ack"

// serviceCredit is the credit a service link keeps granted: how many of its
// messages may wait for the disk at once.
const serviceCredit = 256

// serviceLink is one /messages/devicebound link.
type serviceLink struct {
	svc *Service
	l   *amqp.Link

	mu sync.Mutex
	// tails holds, per queue, a channel closed when the link's latest
	// message to that queue is settled; the next one waits for it.
	tails map[string]chan struct{}
}

// attachService serves /messages/devicebound, where the service sends.
func (s *Service) attachService(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	if l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotAllowed, "/messages/devicebound receives cloud-to-device messages from the service; attach a sender")
	}
	sl := &serviceLink{svc: s, l: l, tails: make(map[string]chan struct{})}
	// Messages up to twice the limit are refused one by one with
	// message-size-exceeded; only absurd ones make the engine detach.
	l.SetMaxMessageSize(uint64(max(2*s.cfg.MaxMessageBytes, 1<<20)))
	l.SetCreditWindow(serviceCredit)
	l.OnMessage(sl.onMessage)
	return nil
}

// parsed is a validated service message.
type parsed struct {
	deviceID, moduleID string
	nm                 c2d.NewMessage
}

// onMessage runs on the connection's reader: it validates the message and
// hands the store work to a goroutine chained behind the link's previous
// message to the same queue.
func (sl *serviceLink) onMessage(d *amqp.Delivery) {
	s := sl.svc
	p, aerr := s.parseServiceMessage(d)
	if aerr != nil {
		d.Reject(aerr)
		return
	}
	q := queueID(p.deviceID, p.moduleID)
	done := make(chan struct{})
	sl.mu.Lock()
	prev := sl.tails[q]
	sl.tails[q] = done
	sl.mu.Unlock()
	finish := func() {
		close(done)
		sl.mu.Lock()
		if sl.tails[q] == done {
			delete(sl.tails, q)
		}
		sl.mu.Unlock()
	}
	run := func() {
		defer finish()
		if prev != nil {
			select {
			case <-prev:
			case <-s.ctx.Done():
				d.Release()
				return
			}
		}
		d.Settle(s.enqueue(s.ctx, q, p))
	}
	if !s.goTracked(run) {
		// The service is closing.
		d.Release()
		finish()
	}
}

// parseServiceMessage checks what can be checked without I/O.
func (s *Service) parseServiceMessage(d *amqp.Delivery) (parsed, *amqp.Error) {
	var p parsed
	if d.Format != 0 {
		return p, amqp.NewError(condArgumentError, fmt.Sprintf("message format 0x%08x is not supported for cloud-to-device messages; send format 0", d.Format))
	}
	if n := len(d.Payload); n > s.cfg.MaxMessageBytes {
		return p, amqp.NewError(amqp.ErrCondMessageSizeExceeded,
			fmt.Sprintf("the message is %d bytes; cloud-to-device messages are limited to %d bytes", n, s.cfg.MaxMessageBytes))
	}
	// StampAnnotations validates every section and drops the delivery
	// annotations; what it returns is what the device will get, before the
	// per-delivery annotations.
	stored, err := telemetry.StampAnnotations(d.Payload, map[any]any{})
	if err != nil {
		return p, amqp.NewError(amqp.ErrCondDecodeError, fmt.Sprintf("the message does not decode: %v", err))
	}
	m, err := d.Message()
	if err != nil {
		return p, amqp.NewError(amqp.ErrCondDecodeError, fmt.Sprintf("the message does not decode: %v", err))
	}
	props := m.Properties
	if props == nil || props.To == "" {
		return p, amqp.NewError(condArgumentError, "the message has no 'to' property; set it to /devices/{deviceId}/messages/devicebound")
	}
	r := hub.ParseAddress(props.To, "")
	if r.Kind != hub.KindDeviceBound {
		return p, amqp.NewError(condArgumentError, fmt.Sprintf("'to' is %q; it must be /devices/{deviceId}/messages/devicebound or /devices/{deviceId}/modules/{moduleId}/messages/devicebound", props.To))
	}
	p.deviceID, p.moduleID = r.DeviceID, r.ModuleID
	if err := registry.ValidateID("device id", r.DeviceID); err != nil {
		return p, amqp.NewError(condArgumentError, fmt.Sprintf("'to' is %q: %v", props.To, err))
	}
	if r.ModuleID != "" {
		if err := registry.ValidateID("module id", r.ModuleID); err != nil {
			return p, amqp.NewError(condArgumentError, fmt.Sprintf("'to' is %q: %v", props.To, err))
		}
	}
	ack := c2d.AckNone
	if v, ok := m.ApplicationProperties[AckProperty]; ok {
		str, isStr := v.(string)
		if !isStr {
			return p, amqp.NewError(condArgumentError, fmt.Sprintf("%s must be a string (none, positive, negative or full), not %T", AckProperty, v))
		}
		if ack, err = c2d.ParseAckMode(str); err != nil {
			return p, amqp.NewError(condArgumentError, fmt.Sprintf("%s is %q; it must be none, positive, negative or full", AckProperty, str))
		}
	}
	p.nm = c2d.NewMessage{
		DeviceID:  r.DeviceID,
		MessageID: messageIDText(props.MessageID),
		Ack:       ack,
		ExpiresAt: s.expiry(props.AbsoluteExpiryTime, m.Header),
		Body:      stored,
	}
	if len(p.nm.MessageID) > c2d.MaxIDBytes {
		return p, amqp.NewError(condArgumentError, fmt.Sprintf("the message-id is %d bytes; the limit is %d", len(p.nm.MessageID), c2d.MaxIDBytes))
	}
	return p, nil
}

// expiry returns the message's absolute expiry, clamped to MaxTTL; zero
// means the store's default TTL.
func (s *Service) expiry(abs time.Time, h *frames.Header) time.Time {
	now := time.Now()
	limit := now.Add(s.cfg.MaxTTL)
	switch {
	case !abs.IsZero():
		if abs.After(limit) {
			return limit
		}
		// A past expiry is kept: the store dead-letters the message at
		// once (feedback Expired), as IoT Hub would.
		return abs
	case h != nil && h.TTL > 0:
		return now.Add(min(h.TTL, s.cfg.MaxTTL))
	}
	return time.Time{}
}

// messageIDText is the text of a message-id that feedback reports as
// originalMessageId.
func messageIDText(id any) string {
	switch v := id.(type) {
	case nil:
		return ""
	case string:
		return v
	case encoding.UUID:
		return v.String()
	case uint64:
		return strconv.FormatUint(v, 10)
	case []byte:
		return hex.EncodeToString(v)
	}
	return fmt.Sprint(id)
}

// enqueue resolves the device and stores the message; it returns the
// delivery's outcome.
func (s *Service) enqueue(ctx context.Context, q string, p parsed) frames.DeliveryState {
	gen, aerr := s.resolve(ctx, p.deviceID, p.moduleID)
	if aerr != nil {
		return frames.Rejected{Error: aerr}
	}
	p.nm.GenerationID = gen
	_, err := s.store.Enqueue(ctx, q, p.nm)
	if errors.Is(err, c2d.ErrQueueFull) {
		// Messages of a deleted incarnation of the device may be taking
		// the room: drop them and try once more.
		if n, derr := s.store.DropGenerations(ctx, q, gen); derr == nil && n > 0 {
			s.log.Info("c2d: dropped messages of a deleted device", "queue", q, "messages", n)
			_, err = s.store.Enqueue(ctx, q, p.nm)
		}
	}
	switch {
	case err == nil:
		return frames.Accepted{}
	case errors.Is(err, c2d.ErrQueueFull):
		return frames.Rejected{Error: amqp.NewError(amqp.ErrCondResourceLimitExceeded,
			fmt.Sprintf("the queue of %s already holds %d messages (DeviceMaximumQueueDepthExceeded)", q, s.cfg.MaxQueueDepth))}
	case errors.Is(err, c2d.ErrInvalid):
		return frames.Rejected{Error: amqp.NewError(condArgumentError, err.Error())}
	case errors.Is(err, pebbleutil.ErrNoSpace):
		return frames.Rejected{Error: noSpaceError("the hub could not store the message")}
	case ctx.Err() != nil:
		return frames.Released{}
	}
	s.log.Error("c2d: enqueue failed", "queue", q, "err", err)
	return frames.Rejected{Error: amqp.NewError(amqp.ErrCondInternalError, "the hub could not store the message")}
}

// resolve returns the generation id of an enabled device (or of a module
// of one), or the error the service gets.
func (s *Service) resolve(ctx context.Context, deviceID, moduleID string) (string, *amqp.Error) {
	dev, err := s.reg.GetDevice(ctx, deviceID)
	if err != nil {
		return "", s.registryError(err, fmt.Sprintf("device %q", deviceID))
	}
	if dev.Status != registry.StatusEnabled {
		return "", amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("device %q is disabled", deviceID))
	}
	if moduleID == "" {
		return dev.GenerationID, nil
	}
	mod, err := s.reg.GetModule(ctx, deviceID, moduleID)
	if err != nil {
		return "", s.registryError(err, fmt.Sprintf("module %q of device %q", moduleID, deviceID))
	}
	return mod.GenerationID, nil
}

func (s *Service) registryError(err error, what string) *amqp.Error {
	if errors.Is(err, registry.ErrDeviceNotFound) || errors.Is(err, registry.ErrModuleNotFound) {
		return amqp.NewError(amqp.ErrCondNotFound, what+" is not registered")
	}
	s.log.Error("c2d: registry lookup failed", "what", what, "err", err)
	return amqp.NewError(amqp.ErrCondInternalError, "looking up "+what+" failed")
}
