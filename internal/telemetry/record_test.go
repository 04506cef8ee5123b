package telemetry

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/store/partlog"
)

func encodeMsg(t testing.TB, m *frames.Message) []byte {
	t.Helper()
	b, err := m.AppendAMQP(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sectionsByCode(t testing.TB, b []byte) map[uint64][][]byte {
	t.Helper()
	secs, err := frames.SplitSections(b, nil)
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	out := map[uint64][][]byte{}
	for _, s := range secs {
		out[s.Code] = append(out[s.Code], s.Raw)
	}
	return out
}

func deviceMessage(t testing.TB) *frames.Message {
	return &frames.Message{
		Header:              &frames.Header{Durable: true, Priority: 4, TTL: time.Minute},
		DeliveryAnnotations: map[any]any{encoding.Symbol("x-opt-lock"): "drop me"},
		Annotations: map[any]any{
			encoding.Symbol("iothub-interface-id"):         "dtmi:x;1",
			encoding.Symbol(AnnDeviceID):                   "spoofed",
			encoding.Symbol("iothub-connection-other"):     "spoofed too",
			encoding.Symbol(AnnEnqueuedTime):               "spoofed",
			encoding.Symbol("x-opt-sequence-number"):       int64(99),
			encoding.Symbol("Diagnostic-Id"):               "00-abc",
			encoding.Symbol(AnnMessageSource):              "twinChangeEvents",
			encoding.Symbol("iothub-connection-module-id"): "m9",
		},
		Properties: &frames.Properties{
			MessageID: "mid-1", To: "/devices/d1/messages/events", CorrelationID: uint64(7),
			ContentType: "application/json", ContentEncoding: "utf-8",
			CreationTime: time.UnixMilli(1700000000123).UTC(),
		},
		ApplicationProperties: map[string]any{"temp": int32(21), "unit": "C", "alert": true},
		Data:                  [][]byte{[]byte(`{"t":21}`)},
		Footer:                map[any]any{encoding.Symbol("f"): "x"},
	}
}

func TestStampAnnotations(t *testing.T) {
	m := deviceMessage(t)
	raw := encodeMsg(t, m)
	when := time.UnixMilli(1700000001000).UTC()
	out, err := StampAnnotations(raw, map[any]any{
		encoding.Symbol(AnnDeviceID):     "d1",
		encoding.Symbol(AnnEnqueuedTime): when,
		AnnMessageSource:                 messageSourceTelemetry,
	})
	if err != nil {
		t.Fatal(err)
	}
	var got frames.Message
	if err := got.UnmarshalAMQP(out); err != nil {
		t.Fatalf("stored record does not decode: %v", err)
	}
	if got.DeliveryAnnotations != nil {
		t.Errorf("delivery annotations kept: %v", got.DeliveryAnnotations)
	}
	want := map[any]any{
		encoding.Symbol(AnnDeviceID):                   "d1",
		encoding.Symbol(AnnEnqueuedTime):               when,
		encoding.Symbol(AnnMessageSource):              "Telemetry",
		encoding.Symbol("iothub-interface-id"):         "dtmi:x;1",
		encoding.Symbol("iothub-connection-other"):     "spoofed too", // generic stamping drops only ann's keys
		encoding.Symbol("x-opt-sequence-number"):       int64(99),
		encoding.Symbol("Diagnostic-Id"):               "00-abc",
		encoding.Symbol("iothub-connection-module-id"): "m9",
	}
	if len(got.Annotations) != len(want) {
		t.Errorf("annotations %v, want %v", got.Annotations, want)
	}
	for k, v := range want {
		if gv := got.Annotations[k]; gv != v {
			t.Errorf("annotation %v = %#v, want %#v", k, gv, v)
		}
	}
	// Every section but the annotations is the sender's bytes.
	in, st := sectionsByCode(t, raw), sectionsByCode(t, out)
	for _, code := range []uint64{frames.CodeHeader, frames.CodeProperties, frames.CodeAppProperties, frames.CodeData, frames.CodeFooter} {
		if len(in[code]) != 1 || len(st[code]) != 1 || !bytes.Equal(in[code][0], st[code][0]) {
			t.Errorf("section 0x%x not copied byte for byte", code)
		}
	}
	if _, ok := st[frames.CodeDeliveryAnn]; ok {
		t.Error("delivery-annotations section stored")
	}
	// Header first, then annotations, then the rest in order.
	secs, _ := frames.SplitSections(out, nil)
	order := []uint64{frames.CodeHeader, frames.CodeMessageAnn, frames.CodeProperties, frames.CodeAppProperties, frames.CodeData, frames.CodeFooter}
	for i, s := range secs {
		if i >= len(order) || s.Code != order[i] {
			t.Fatalf("section %d is 0x%x, want order %x", i, s.Code, order)
		}
	}
}

func TestStampAnnotationsBadKeys(t *testing.T) {
	raw := encodeMsg(t, &frames.Message{Data: [][]byte{[]byte("x")}})
	if _, err := StampAnnotations(raw, map[any]any{uint64(1): "x"}); err == nil {
		t.Error("ulong annotation key accepted")
	}
	if _, err := StampAnnotations(raw, map[any]any{"k": "a", encoding.Symbol("k"): "b"}); err == nil {
		t.Error("duplicate key accepted")
	}
	if _, err := StampAnnotations(raw, map[any]any{"k": make(chan int)}); err == nil {
		t.Error("unencodable value accepted")
	}
}

// section builds a described section by hand, for malformed input.
func section(code uint64, value ...byte) []byte {
	return append(encoding.AppendDescriptor(nil, code), value...)
}

func TestStampAnnotationsMalformed(t *testing.T) {
	data := section(frames.CodeData, encoding.TypeVbin8, 1, 'x')
	props := encodeMsg(t, &frames.Message{Properties: &frames.Properties{MessageID: "m"}})
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		raw  []byte
	}{
		{"empty", nil},
		{"not a section", []byte{encoding.TypeStr8, 1, 'x'}},
		{"unknown descriptor", section(0x99, encoding.TypeNull)},
		{"truncated data", section(frames.CodeData, encoding.TypeVbin8, 5, 'x')},
		{"properties after data", cat(data, props)},
		{"two properties", cat(props, props, data)},
		{"value then data", cat(section(frames.CodeValue, encoding.TypeNull), data)},
		{"two values", cat(section(frames.CodeValue, encoding.TypeNull), section(frames.CodeValue, encoding.TypeNull))},
		{"data then sequence", cat(data, section(frames.CodeSequence, encoding.TypeList0))},
		{"data not binary", section(frames.CodeData, encoding.TypeStr8, 1, 'x')},
		{"sequence not list", section(frames.CodeSequence, encoding.TypeNull)},
		{"properties not list", cat(section(frames.CodeProperties, encoding.TypeMap8, 1, 0), data)},
		{"message-id boolean", cat(section(frames.CodeProperties, encoding.TypeList8, 2, 1, encoding.TypeTrue), data)},
		{"content-type timestamp", cat(section(frames.CodeProperties, encoding.TypeList8, 16, 7,
			encoding.TypeNull, encoding.TypeNull, encoding.TypeNull, encoding.TypeNull, encoding.TypeNull, encoding.TypeNull,
			encoding.TypeTimestamp, 0, 0, 0, 0, 0, 0, 0, 0), data)},
		{"header priority string", cat(section(frames.CodeHeader, encoding.TypeList8, 5, 2, encoding.TypeNull, encoding.TypeStr8, 1, 'x'), data)},
		{"list count beyond content", cat(section(frames.CodeProperties, encoding.TypeList8, 2, 3, encoding.TypeNull), data)},
		{"list content beyond count", cat(section(frames.CodeProperties, encoding.TypeList8, 3, 1, encoding.TypeNull, encoding.TypeNull), data)},
		{"app-properties symbol key", cat(section(frames.CodeAppProperties, encoding.TypeMap8, 6, 2, encoding.TypeSym8, 1, 'k', encoding.TypeNull), data)},
		{"app-properties odd map", cat(section(frames.CodeAppProperties, encoding.TypeMap8, 4, 1, encoding.TypeStr8, 1, 'k'), data)},
		{"app-properties not map", cat(section(frames.CodeAppProperties, encoding.TypeList0), data)},
		{"bad utf8 value", cat(section(frames.CodeAppProperties, encoding.TypeMap8, 7, 2, encoding.TypeStr8, 1, 'k', encoding.TypeStr8, 1, 0xff), data)},
		{"bad boolean", cat(section(frames.CodeMessageAnn, encoding.TypeMap8, 6, 2, encoding.TypeSym8, 1, 'k', encoding.TypeBoolean, 7), data)},
		{"annotations not map", cat(section(frames.CodeMessageAnn, encoding.TypeStr8, 0), data)},
		{"bad nested value", cat(section(frames.CodeValue, encoding.TypeList8, 4, 1, encoding.TypeStr8, 1, 0xfe))},
		{"bad descriptor", section(frames.CodeValue, encoding.TypeDescribed, encoding.TypeTrue, encoding.TypeNull)},
		{"invalid code", section(frames.CodeValue, 0xff)},
		{"bad char", section(frames.CodeValue, encoding.TypeChar, 0, 0x11, 0, 0)},
		// Found by FuzzStampAnnotations: compound map keys cannot be decoded.
		{"footer list key", section(frames.CodeFooter, encoding.TypeMap8, 12, 2,
			encoding.TypeList8, 6, 2, encoding.TypeSmallUint, 0x30, encoding.TypeVbin8, 1, '0', encoding.TypeVbin8, 1, '0')},
		{"annotations map key", cat(section(frames.CodeMessageAnn, encoding.TypeMap8, 5, 2, encoding.TypeMap8, 1, 0, encoding.TypeNull), data)},
		{"nested list0 key", section(frames.CodeValue, encoding.TypeMap8, 3, 2, encoding.TypeList0, encoding.TypeNull)},
		{"nested described key", section(frames.CodeValue, encoding.TypeList8, 9, 1,
			encoding.TypeMap8, 6, 2, encoding.TypeDescribed, encoding.TypeSmallUlong, 1, encoding.TypeNull, encoding.TypeNull)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := StampAnnotations(tc.raw, map[any]any{"k": "v"})
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("got %x, %v; want ErrBadMessage", out, err)
			}
		})
	}
}

func TestStampAnnotationsDeepNesting(t *testing.T) {
	// 40 nested lists: beyond the depth limit, but each size is valid.
	v := []byte{encoding.TypeList0}
	for range 40 {
		v = append([]byte{encoding.TypeList32, 0, 0, 0, 0, 0, 0, 0, 1}, v...)
		n := len(v) - 5
		v[1], v[2], v[3], v[4] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	}
	if _, err := StampAnnotations(section(frames.CodeValue, v...), nil); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("deep nesting: %v", err)
	}
}

func TestAppendEventHubAnnotations(t *testing.T) {
	raw := encodeMsg(t, deviceMessage(t))
	stored, err := StampAnnotations(raw, map[any]any{encoding.Symbol(AnnDeviceID): "d1"})
	if err != nil {
		t.Fatal(err)
	}
	e := partlog.Entry{Seq: 1 << 40, Offset: 123456789012, EnqueuedTime: 1700000002345}
	out, err := AppendEventHubAnnotations([]byte("prefix"), stored, e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, []byte("prefix")) {
		t.Fatal("dst not kept")
	}
	var got frames.Message
	if err := got.UnmarshalAMQP(out[len("prefix"):]); err != nil {
		t.Fatal(err)
	}
	checks := map[encoding.Symbol]any{
		AnnSequenceNumber: int64(1 << 40),
		AnnOffset:         "123456789012",
		AnnEHEnqueuedTime: time.UnixMilli(1700000002345).UTC(),
		AnnDeviceID:       "d1",
		"Diagnostic-Id":   "00-abc",
	}
	for k, v := range checks {
		if gv := got.Annotations[k]; gv != v {
			t.Errorf("%s = %#v (%T), want %#v (%T)", k, gv, gv, v, v)
		}
	}
	n := 0
	for k := range got.Annotations {
		if k == encoding.Symbol(AnnSequenceNumber) {
			n++
		}
	}
	if n != 1 || len(got.Annotations) != 10 {
		t.Errorf("annotations %v", got.Annotations)
	}
	in, st := sectionsByCode(t, stored), sectionsByCode(t, out[len("prefix"):])
	for _, code := range []uint64{frames.CodeHeader, frames.CodeProperties, frames.CodeAppProperties, frames.CodeData, frames.CodeFooter} {
		if !bytes.Equal(in[code][0], st[code][0]) {
			t.Errorf("section 0x%x changed", code)
		}
	}

	// A record with no annotations at all still gets them.
	bare := encodeMsg(t, &frames.Message{Data: [][]byte{[]byte("x")}})
	out, err = AppendEventHubAnnotations(nil, bare, partlog.Entry{Seq: 0, Offset: 0, EnqueuedTime: 5})
	if err != nil {
		t.Fatal(err)
	}
	got = frames.Message{}
	if err := got.UnmarshalAMQP(out); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[encoding.Symbol(AnnOffset)] != "0" || got.Annotations[encoding.Symbol(AnnSequenceNumber)] != int64(0) {
		t.Errorf("annotations %v", got.Annotations)
	}

	if _, err := AppendEventHubAnnotations(nil, []byte{1, 2, 3}, e); !errors.Is(err, ErrBadMessage) {
		t.Errorf("garbage record: %v", err)
	}
	buf := make([]byte, 0, 4096)
	if a := testing.AllocsPerRun(100, func() { AppendEventHubAnnotations(buf[:0], stored, e) }); a != 0 {
		t.Errorf("AppendEventHubAnnotations allocates %v times", a)
	}
}

func FuzzStampAnnotations(f *testing.F) {
	f.Add(encodeMsg(f, deviceMessage(f)))
	f.Add(encodeMsg(f, &frames.Message{Value: map[any]any{"a": []any{int32(1), "b"}}, HasValue: true}))
	f.Add(section(frames.CodeData, encoding.TypeVbin8, 1, 'x'))
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, err := StampAnnotations(raw, map[any]any{encoding.Symbol(AnnDeviceID): "d"})
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error not ErrBadMessage: %v", err)
			}
			return
		}
		var m frames.Message
		if err := m.UnmarshalAMQP(out); err != nil {
			t.Fatalf("accepted message does not decode once stored: %v\nin  %x\nout %x", err, raw, out)
		}
		if m.Annotations[encoding.Symbol(AnnDeviceID)] != "d" {
			t.Fatalf("annotation lost: %v", m.Annotations)
		}
		if _, err := AppendEventHubAnnotations(nil, out, partlog.Entry{Seq: 1, Offset: 2, EnqueuedTime: 3}); err != nil {
			t.Fatalf("stored record refused by AppendEventHubAnnotations: %v", err)
		}
	})
}

// benchMessage is a typical telemetry message: a few properties, two
// application properties and a 256-byte body.
func benchMessage(b *testing.B) []byte {
	return encodeMsg(b, &frames.Message{
		Properties: &frames.Properties{
			MessageID: "3f1c2a7e-5b8d-4c1e-9a0f-123456789abc", To: "/devices/bench-0/messages/events",
			ContentType: "application/json", ContentEncoding: "utf-8",
		},
		ApplicationProperties: map[string]any{"temperatureAlert": "false", "level": "normal"},
		Data:                  [][]byte{bytes.Repeat([]byte("t"), 256)},
	})
}

// BenchmarkStampRecord is the per-message work of ingest: validate the
// message and build its record with the hub's annotations.
func BenchmarkStampRecord(b *testing.B) {
	raw := benchMessage(b)
	var pairs []byte
	for _, kv := range [][2]string{{AnnDeviceID, "bench-0"}, {AnnAuthMethod, `{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`}, {AnnAuthGenerationID, "638000000000000000"}, {AnnMessageSource, "Telemetry"}} {
		pairs = encoding.AppendString(encoding.AppendSymbol(pairs, encoding.Symbol(kv[0])), kv[1])
	}
	pairs = appendTimestampMs(encoding.AppendSymbol(pairs, AnnEnqueuedTime), 1700000000000)
	buf := make([]byte, 0, 4096)
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if buf, err = appendStored(buf[:0], raw, pairs, 5, isHubKey, true); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendEventHubAnnotations is the reader's per-event work.
func BenchmarkAppendEventHubAnnotations(b *testing.B) {
	rec, err := StampAnnotations(benchMessage(b), map[any]any{AnnDeviceID: "bench-0", AnnMessageSource: "Telemetry"})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, 4096)
	e := partlog.Entry{Seq: 123456, Offset: 987654321, EnqueuedTime: 1700000000000}
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		if buf, err = AppendEventHubAnnotations(buf[:0], rec, e); err != nil {
			b.Fatal(err)
		}
	}
}
