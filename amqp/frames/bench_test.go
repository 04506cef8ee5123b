package frames

import (
	"bytes"
	"testing"
	"time"

	"amqphub/amqp/encoding"
)

// telemetryMessage is a typical device-to-cloud message: properties, a few
// application properties and a JSON data section, about 256 bytes encoded.
func telemetryMessage(tb testing.TB) []byte {
	m := &Message{
		Properties: &Properties{
			MessageID:       "5b1a8d2c-6f7e-4a3b-9c0d-1e2f3a4b5c6d",
			To:              "/devices/thermostat-0042/messages/events",
			ContentType:     "application/json",
			ContentEncoding: "utf-8",
			CreationTime:    time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		},
		ApplicationProperties: map[string]any{"temperatureAlert": false, "sensor": "bme280", "seq": int64(1234)},
		Data:                  [][]byte{[]byte(`{"deviceId":"thermostat-0042","temperature":21.53,"humidity":48.2,"pressure":1013.2,"battery":87}`)},
	}
	b, err := m.AppendAMQP(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func telemetryTransfer() *Transfer {
	return &Transfer{Handle: 1, DeliveryID: 1234567, HasDeliveryID: true,
		DeliveryTag: []byte{0, 0, 0, 0, 0, 0x12, 0xd6, 0x87}, MessageFormat: 0, HasMessageFormat: true, HasSettled: true}
}

func telemetryFrame(tb testing.TB) []byte {
	f, err := AppendFrame(nil, FrameAMQP, 3, telemetryTransfer(), telemetryMessage(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

func flowFrame(tb testing.TB) []byte {
	f, err := AppendFrame(nil, FrameAMQP, 3, &Flow{NextIncomingID: 1234568, HasNextIncomingID: true,
		IncomingWindow: 5000, NextOutgoingID: 1, OutgoingWindow: 5000, Handle: 1, HasHandle: true,
		DeliveryCount: 1234567, HasDeliveryCount: true, LinkCredit: 1000, HasLinkCredit: true}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

func dispositionFrame(tb testing.TB) []byte {
	f, err := AppendFrame(nil, FrameAMQP, 3, &Disposition{Role: RoleReceiver, First: 1234500, Last: 1234567,
		HasLast: true, Settled: true, State: Accepted{}}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// decodeFrame is what the connection reader does per frame.
func decodeFrame(d *Decoder, f []byte) (Performative, error) {
	h, err := ParseFrameHeader(f, 1<<20)
	if err != nil {
		return nil, err
	}
	return d.Decode(f[int(h.DataOff)*4 : h.Size])
}

// The hot path must not allocate: header and performative of transfer,
// flow and disposition decode into the Decoder's own structs, and encoding
// them appends to the caller's buffer.
func TestHotPathAllocations(t *testing.T) {
	var d Decoder
	for name, f := range map[string][]byte{
		"transfer": telemetryFrame(t), "flow": flowFrame(t), "disposition": dispositionFrame(t),
	} {
		if _, err := decodeFrame(&d, f); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(100, func() { _, _ = decodeFrame(&d, f) }); n != 0 {
			t.Errorf("decoding a %s frame: %v allocs, want 0", name, n)
		}
	}
	buf := make([]byte, 0, 1024)
	tr, msg := telemetryTransfer(), telemetryMessage(t)
	disp := &Disposition{Role: RoleReceiver, First: 1, Last: 9, HasLast: true, Settled: true, State: Accepted{}}
	flow := &Flow{IncomingWindow: 1, NextOutgoingID: 2, OutgoingWindow: 3, LinkCredit: 100, HasLinkCredit: true, HasHandle: true}
	for name, p := range map[string]Performative{"transfer": tr, "disposition": disp, "flow": flow} {
		if n := testing.AllocsPerRun(100, func() { _, _ = AppendFrame(buf[:0], FrameAMQP, 3, p, msg) }); n != 0 {
			t.Errorf("encoding a %s frame: %v allocs, want 0", name, n)
		}
	}
}

func BenchmarkDecodeTransferFrame(b *testing.B) {
	f := telemetryFrame(b)
	var d Decoder
	b.ReportAllocs()
	b.SetBytes(int64(len(f)))
	for b.Loop() {
		p, err := decodeFrame(&d, f)
		if err != nil || len(p.(*Transfer).Payload) == 0 {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeFlowFrame(b *testing.B) {
	f := flowFrame(b)
	var d Decoder
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeFrame(&d, f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeDispositionFrame(b *testing.B) {
	f := dispositionFrame(b)
	var d Decoder
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeFrame(&d, f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshalTelemetryMessage(b *testing.B) {
	msg := telemetryMessage(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	var m Message
	for b.Loop() {
		if err := m.UnmarshalAMQP(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSplitSectionsTelemetry(b *testing.B) {
	msg := telemetryMessage(b)
	secs := make([]Section, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if secs, err = SplitSections(msg, secs[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendTransferFrame(b *testing.B) {
	tr, msg := telemetryTransfer(), telemetryMessage(b)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], FrameAMQP, 3, tr, msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendDispositionFrame(b *testing.B) {
	d := &Disposition{Role: RoleReceiver, First: 1234500, Last: 1234567, HasLast: true, Settled: true, State: Accepted{}}
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = AppendFrame(buf[:0], FrameAMQP, 3, d, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendTelemetryMessage(b *testing.B) {
	var m Message
	if err := m.UnmarshalAMQP(telemetryMessage(b)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = m.AppendAMQP(buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}

func TestTelemetryFixture(t *testing.T) {
	msg := telemetryMessage(t)
	if len(msg) < 230 || len(msg) > 290 {
		t.Fatalf("telemetry message is %d bytes, want about 256", len(msg))
	}
	p, err := decodeFrame(&Decoder{}, telemetryFrame(t))
	if err != nil || !bytes.Equal(p.(*Transfer).Payload, msg) {
		t.Fatalf("telemetry frame: %v", err)
	}
	var m Message
	if err := m.UnmarshalAMQP(msg); err != nil || m.Properties.ContentType != encoding.Symbol("application/json") {
		t.Fatalf("telemetry message: %v", err)
	}
}
