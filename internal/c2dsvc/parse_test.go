package c2dsvc

import (
	"log/slog"
	"testing"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/store/c2d"
)

func encode(t testing.TB, m *frames.Message) []byte {
	t.Helper()
	b, err := m.AppendAMQP(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseOnly() *Service {
	return &Service{cfg: Config{}.withDefaults(), log: slog.New(slog.DiscardHandler)}
}

// TestParseServiceMessage covers what the service link checks before any
// I/O: bad input gets a clear condition, good input its stored form.
func TestParseServiceMessage(t *testing.T) {
	to := "/devices/d1/messages/devicebound"
	msg := func(mod func(m *frames.Message)) *frames.Message {
		m := &frames.Message{Properties: &frames.Properties{To: to, MessageID: "id"}, Data: [][]byte{[]byte("x")}}
		if mod != nil {
			mod(m)
		}
		return m
	}
	uuid := encoding.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for _, tc := range []struct {
		name    string
		format  uint32
		payload []byte
		cond    amqp.Condition // "" means accepted by the parser
		check   func(t *testing.T, p parsed)
	}{
		{name: "garbage", payload: []byte{0xde, 0xad, 0xbe, 0xef}, cond: amqp.ErrCondDecodeError},
		{name: "empty", payload: []byte{}, cond: amqp.ErrCondDecodeError},
		{name: "truncated", payload: encode(t, msg(nil))[:10], cond: amqp.ErrCondDecodeError},
		{name: "batch format", format: frames.MessageFormatBatch, payload: encode(t, msg(nil)), cond: condArgumentError},
		{name: "no properties", payload: encode(t, &frames.Message{Data: [][]byte{[]byte("x")}}), cond: condArgumentError},
		{name: "module address", payload: encode(t, msg(func(m *frames.Message) {
			m.Properties.To = "amqps://hub.example/devices/d%201/modules/m1/messages/deviceBound"
		})), cond: condArgumentError}, // "d 1" is not a valid device id
		{name: "module", payload: encode(t, msg(func(m *frames.Message) {
			m.Properties.To = "amqps://hub.example/devices/d1/modules/m1/messages/deviceBound"
		})), check: func(t *testing.T, p parsed) {
			if p.deviceID != "d1" || p.moduleID != "m1" {
				t.Fatalf("routed to %q/%q", p.deviceID, p.moduleID)
			}
		}},
		{name: "uuid id", payload: encode(t, msg(func(m *frames.Message) { m.Properties.MessageID = uuid })), check: func(t *testing.T, p parsed) {
			if p.nm.MessageID != "01020304-0506-0708-090a-0b0c0d0e0f10" {
				t.Fatalf("message id text %q", p.nm.MessageID)
			}
		}},
		{name: "ulong id", payload: encode(t, msg(func(m *frames.Message) { m.Properties.MessageID = uint64(42) })), check: func(t *testing.T, p parsed) {
			if p.nm.MessageID != "42" {
				t.Fatalf("message id text %q", p.nm.MessageID)
			}
		}},
		{name: "binary id", payload: encode(t, msg(func(m *frames.Message) { m.Properties.MessageID = []byte{0xab, 0x01} })), check: func(t *testing.T, p parsed) {
			if p.nm.MessageID != "ab01" {
				t.Fatalf("message id text %q", p.nm.MessageID)
			}
		}},
		{name: "ack case-insensitive", payload: encode(t, msg(func(m *frames.Message) {
			m.ApplicationProperties = map[string]any{AckProperty: "Full"}
		})), check: func(t *testing.T, p parsed) {
			if p.nm.Ack != c2d.AckFull {
				t.Fatalf("ack %v", p.nm.Ack)
			}
		}},
		{name: "header ttl", payload: encode(t, msg(func(m *frames.Message) { m.Header = &frames.Header{Priority: 4, TTL: time.Minute} })), check: func(t *testing.T, p parsed) {
			if d := time.Until(p.nm.ExpiresAt); d < 50*time.Second || d > time.Minute {
				t.Fatalf("expires in %v; want about a minute", d)
			}
		}},
		{name: "ttl clamped", payload: encode(t, msg(func(m *frames.Message) {
			m.Properties.AbsoluteExpiryTime = time.Now().Add(30 * 24 * time.Hour)
		})), check: func(t *testing.T, p parsed) {
			if d := time.Until(p.nm.ExpiresAt); d > DefaultMaxTTL || d < DefaultMaxTTL-time.Minute {
				t.Fatalf("expires in %v; want the %v maximum", d, DefaultMaxTTL)
			}
		}},
		{name: "no expiry", payload: encode(t, msg(nil)), check: func(t *testing.T, p parsed) {
			if !p.nm.ExpiresAt.IsZero() {
				t.Fatalf("expiry %v; want the store's default", p.nm.ExpiresAt)
			}
		}},
		{name: "delivery annotations dropped", payload: encode(t, msg(func(m *frames.Message) {
			m.DeliveryAnnotations = map[any]any{encoding.Symbol("x-secret"): "s"}
		})), check: func(t *testing.T, p parsed) {
			var got frames.Message
			if err := got.UnmarshalAMQP(p.nm.Body); err != nil {
				t.Fatal(err)
			}
			if got.DeliveryAnnotations != nil || string(got.Data[0]) != "x" || got.Properties.To != to {
				t.Fatalf("stored message %+v", got)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, aerr := parseOnly().parseServiceMessage(&amqp.Delivery{Format: tc.format, Payload: tc.payload})
			switch {
			case tc.cond == "" && aerr != nil:
				t.Fatalf("refused: %v", aerr)
			case tc.cond != "" && (aerr == nil || aerr.Condition != tc.cond):
				t.Fatalf("got %v; want %s", aerr, tc.cond)
			case tc.cond != "" && aerr.Description == "":
				t.Fatal("a refusal without a description")
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// FuzzParseServiceMessage: any payload is either refused with a condition
// or parsed into a message the device side can stamp.
func FuzzParseServiceMessage(f *testing.F) {
	f.Add(encode(f, &frames.Message{Properties: &frames.Properties{To: "/devices/d1/messages/devicebound"}, Data: [][]byte{[]byte("x")}}))
	f.Add(encode(f, &frames.Message{
		Header:                &frames.Header{Priority: 4, TTL: time.Second},
		Annotations:           map[any]any{encoding.Symbol("a"): int64(1)},
		Properties:            &frames.Properties{To: "/devices/d1/modules/m/messages/devicebound", MessageID: uint64(1)},
		ApplicationProperties: map[string]any{AckProperty: "full"},
		HasValue:              true,
		Value:                 "v",
	}))
	f.Add([]byte{0x00, 0x53, 0x73})
	s := parseOnly()
	f.Fuzz(func(t *testing.T, payload []byte) {
		p, aerr := s.parseServiceMessage(&amqp.Delivery{Payload: payload})
		if aerr != nil {
			if aerr.Condition == "" || aerr.Description == "" {
				t.Fatalf("refusal without condition or description: %+v", aerr)
			}
			return
		}
		if _, err := deviceMessage(c2d.Message{Body: p.nm.Body, EnqueuedAt: time.Now()}); err != nil {
			t.Fatalf("accepted message cannot be delivered: %v", err)
		}
	})
}
