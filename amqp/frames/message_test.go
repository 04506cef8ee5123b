package frames

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"amqphub/amqp/encoding"
)

var (
	lockToken = encoding.UUID{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	// 2024-01-02T03:04:05.678Z is 1704164645678 ms = 0x0000018cc820db2e.
	tsHex  = "83 00 00 01 8c c8 20 db 2e"
	tsTime = time.Date(2024, 1, 2, 3, 4, 5, 678e6, time.UTC)
)

// fullMessageHex is a message with every section (part 3, 3.2), written by
// hand in spec order. Each map has one entry so the bytes are unique.
func fullMessageHex() string {
	return strings.Join([]string{
		described(0x70, list8("41", "50 07", "70 00 00 75 30", "41", "52 02")),
		described(0x71, map8(sym8("x-opt-lock-token"), "98 123e4567e89b12d3a456426614174000")),
		described(0x72, map8(sym8("iothub-connection-device-id"), str8("dev1"))),
		described(0x73, list8(str8("msg-1"), vbin8([]byte("user")), str8("/devices/dev1/messages/events"),
			str8("subj"), str8("reply"), "53 07", sym8("application/json"), sym8("utf-8"),
			tsHex, tsHex, str8("g"), "52 03", str8("rg"))),
		described(0x74, map8(str8("temp"), "82 40 35 80 00 00 00 00 00")),
		described(0x75, vbin8([]byte("hello"))),
		described(0x75, vbin8([]byte("world"))),
		described(0x78, map8(sym8("x-hash"), vbin8([]byte{1, 2}))),
	}, " ")
}

func fullMessage() *Message {
	return &Message{
		Header:              &Header{Durable: true, Priority: 7, TTL: 30 * time.Second, FirstAcquirer: true, DeliveryCount: 2},
		DeliveryAnnotations: map[any]any{encoding.Symbol("x-opt-lock-token"): lockToken},
		Annotations:         map[any]any{encoding.Symbol("iothub-connection-device-id"): "dev1"},
		Properties: &Properties{
			MessageID: "msg-1", UserID: []byte("user"), To: "/devices/dev1/messages/events", Subject: "subj",
			ReplyTo: "reply", CorrelationID: uint64(7), ContentType: "application/json", ContentEncoding: "utf-8",
			AbsoluteExpiryTime: tsTime, CreationTime: tsTime, GroupID: "g", GroupSequence: 3, ReplyToGroupID: "rg",
		},
		ApplicationProperties: map[string]any{"temp": 21.5},
		Data:                  [][]byte{[]byte("hello"), []byte("world")},
		Footer:                map[any]any{encoding.Symbol("x-hash"): []byte{1, 2}},
	}
}

func encodeMsg(t *testing.T, m *Message) []byte {
	t.Helper()
	b, err := m.AppendAMQP(nil)
	if err != nil {
		t.Fatalf("AppendAMQP: %v", err)
	}
	return b
}

func decodeMsg(t *testing.T, b []byte) *Message {
	t.Helper()
	var m Message
	if err := m.UnmarshalAMQP(b); err != nil {
		t.Fatalf("UnmarshalAMQP(% x): %v", b, err)
	}
	return &m
}

func TestMessageAllSections(t *testing.T) {
	in := hx(t, fullMessageHex())
	got := decodeMsg(t, in)
	if want := fullMessage(); !reflect.DeepEqual(got, want) {
		t.Fatalf("decode\n got %#v\nwant %#v", got, want)
	}
	if got.Properties.CreationTime.Location() != time.UTC {
		t.Error("timestamps are not UTC")
	}
	if enc := encodeMsg(t, fullMessage()); !bytes.Equal(enc, in) {
		t.Fatalf("encode\n got % x\nwant % x", enc, in)
	}
}

func TestMessageBodies(t *testing.T) {
	tests := []struct {
		name string
		m    *Message
		hex  string
	}{
		{"amqp-value string", &Message{Value: "v", HasValue: true}, described(0x77, str8("v"))},
		{"amqp-value null", &Message{HasValue: true}, described(0x77, "40")},
		{"amqp-value map", &Message{Value: map[any]any{"k": int32(-1)}, HasValue: true},
			described(0x77, map8(str8("k"), "54 ff"))},
		{"amqp-sequence twice", &Message{Sequence: [][]any{{int64(1), "a"}, {}}},
			described(0x76, list8("55 01", str8("a"))) + " " + described(0x76, "45")},
		{"empty properties", &Message{Properties: &Properties{}}, described(0x73, "45")},
		{"header with defaults only", &Message{Header: &Header{Priority: 4}}, described(0x70, "45")},
		{"empty data section", &Message{Data: [][]byte{{}}}, described(0x75, "a0 00")},
		{"empty annotations", &Message{Annotations: map[any]any{}}, described(0x72, "c1 01 00")},
		{"no sections", &Message{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := hx(t, tc.hex)
			if got := encodeMsg(t, tc.m); !bytes.Equal(got, want) {
				t.Errorf("encode\n got % x\nwant % x", got, want)
			}
			if got := decodeMsg(t, want); !reflect.DeepEqual(got, tc.m) {
				t.Errorf("decode\n got %#v\nwant %#v", got, tc.m)
			}
		})
	}
}

func TestHeaderDefaults(t *testing.T) {
	for _, in := range []string{
		described(0x70, "45"),
		described(0x70, list8("40", "40", "40", "40", "40")),
		described(0x70, list8("42", "40", "40", "42", "43", str8("future field"))),
	} {
		m := decodeMsg(t, hx(t, in))
		if want := (&Header{Priority: 4}); !reflect.DeepEqual(m.Header, want) {
			t.Errorf("%s: header %#v, want %#v", in, m.Header, want)
		}
	}
}

// message-id and correlation-id keep their AMQP type (part 3, 3.2.11-14),
// so a reply can echo the exact id.
func TestMessageIDTypes(t *testing.T) {
	tests := []struct {
		name    string
		hex     string
		want    any
		reenc   string // the smallest form our encoder writes back
		badType bool
	}{
		{"string", str8("id-1"), "id-1", str8("id-1"), false},
		{"ulong", "80 00 00 00 01 00 00 00 00", uint64(1 << 32), "80 00 00 00 01 00 00 00 00", false},
		{"smallulong", "53 2a", uint64(42), "53 2a", false},
		{"ulong0", "44", uint64(0), "44", false},
		{"uuid", "98 123e4567e89b12d3a456426614174000", lockToken, "98 123e4567e89b12d3a456426614174000", false},
		{"binary", vbin8([]byte{0xde, 0xad}), []byte{0xde, 0xad}, vbin8([]byte{0xde, 0xad}), false},
		{"smalluint tolerated as ulong", "52 05", uint64(5), "53 05", false},
		{"symbol is not a message-id type", sym8("x"), nil, "", true},
		{"int is not a message-id type", "54 01", nil, "", true},
		{"list is not a message-id type", "45", nil, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for field, props := range map[string]string{
				"message-id":     list8(tc.hex),
				"correlation-id": list8("40", "40", "40", "40", "40", tc.hex),
			} {
				var m Message
				err := m.UnmarshalAMQP(hx(t, described(0x73, props)))
				if tc.badType {
					if err == nil {
						t.Errorf("%s: decoded %#v, want error", field, m.Properties)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", field, err)
				}
				got := m.Properties.MessageID
				if field == "correlation-id" {
					got = m.Properties.CorrelationID
				}
				if reflect.TypeOf(got) != reflect.TypeOf(tc.want) || !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("%s = %#v (%T), want %#v (%T)", field, got, got, tc.want, tc.want)
				}
				// Echo: the id goes back out with the same AMQP type.
				reply := &Message{Properties: &Properties{CorrelationID: got}}
				want := hx(t, described(0x73, list8("40", "40", "40", "40", "40", tc.reenc)))
				if enc := encodeMsg(t, reply); !bytes.Equal(enc, want) {
					t.Fatalf("echo of %s\n got % x\nwant % x", field, enc, want)
				}
			}
		})
	}
	// A decoded binary id is a copy, not an alias of the frame buffer.
	in := hx(t, described(0x73, list8(vbin8([]byte{1}))))
	m := decodeMsg(t, in)
	in[len(in)-1] = 9
	if m.Properties.MessageID.([]byte)[0] != 1 {
		t.Error("binary message-id aliases the input")
	}
}

func TestMessageDecodeErrors(t *testing.T) {
	// structural errors break SplitSections too; content errors only show
	// when a section is decoded.
	tests := []struct {
		name       string
		hex        string
		structural bool
	}{
		{"not described", str8("x"), true},
		{"performative code", described(0x10, "45"), true},
		{"unknown section code", described(0x79, "45"), true},
		{"unknown symbolic section", "00 " + sym8("amqp:nothing:list") + " 45", true},
		{"truncated after descriptor", "00 53 75", true},
		{"value truncated", described(0x77, "a1 05 61"), true},
		{"trailing garbage", described(0x75, vbin8(nil)) + " ff", true},
		{"header not a list", described(0x70, str8("x")), false},
		{"header priority overflow", described(0x70, list8("40", "60 01 00")), false},
		{"header list size mismatch", "00 53 70 c0 03 01 41 40", false},
		{"properties list size mismatch", "00 53 73 c0 04 01 a1 00 40", false},
		{"properties to wrong type", described(0x73, list8("40", "40", "52 01")), false},
		{"properties subject bad utf8", described(0x73, list8("40", "40", "40", "a1 01 ff")), false},
		{"properties timestamp wrong", described(0x73, list8("40", "40", "40", "40", "40", "40", "40", "40", "52 01")), false},
		{"app properties symbol key", described(0x74, map8(sym8("k"), "41")), false},
		{"app properties not a map", described(0x74, "45"), false},
		{"annotations not a map", described(0x72, str8("x")), false},
		{"data not binary", described(0x75, str8("x")), false},
		{"sequence not a list", described(0x76, str8("x")), false},
		{"footer not a map", described(0x78, "45"), false},
	}
	for _, tc := range tests {
		var m Message
		if err := m.UnmarshalAMQP(hx(t, tc.hex)); err == nil {
			t.Errorf("%s: decoded %#v, want error", tc.name, m)
		}
		_, err := SplitSections(hx(t, tc.hex), nil)
		if tc.structural && err == nil {
			t.Errorf("%s: SplitSections accepted it", tc.name)
		}
		if !tc.structural && err != nil {
			t.Errorf("%s: SplitSections: %v", tc.name, err)
		}
	}
}

func TestMessageSymbolicSections(t *testing.T) {
	in := "00 " + sym8("amqp:properties:list") + " " + list8(str8("id")) + " 00 " + sym8("amqp:data:binary") + " " + vbin8([]byte("x"))
	m := decodeMsg(t, hx(t, in))
	if m.Properties.MessageID != "id" || len(m.Data) != 1 || string(m.Data[0]) != "x" {
		t.Fatalf("got %#v", m)
	}
	secs, err := SplitSections(hx(t, in), nil)
	if err != nil || len(secs) != 2 || secs[0].Code != CodeProperties || secs[1].Code != CodeData {
		t.Fatalf("SplitSections: %+v, %v", secs, err)
	}
}

func TestSplitSections(t *testing.T) {
	in := hx(t, fullMessageHex())
	prefix := []Section{{Code: 1}}
	secs, err := SplitSections(in, prefix)
	if err != nil {
		t.Fatal(err)
	}
	wantCodes := []uint64{0, CodeHeader, CodeDeliveryAnn, CodeMessageAnn, CodeProperties, CodeAppProperties, CodeData, CodeData, CodeFooter}
	if len(secs) != len(wantCodes) {
		t.Fatalf("%d sections, want %d", len(secs), len(wantCodes))
	}
	var joined []byte
	for i, s := range secs[1:] {
		if s.Code != wantCodes[i+1] {
			t.Errorf("section %d code %#x, want %#x", i, s.Code, wantCodes[i+1])
		}
		// Each raw section is a complete message on its own.
		var m Message
		if err := m.UnmarshalAMQP(s.Raw); err != nil {
			t.Errorf("section %d does not decode alone: %v", i, err)
		}
		joined = append(joined, s.Raw...)
	}
	if !bytes.Equal(joined, in) {
		t.Fatal("sections do not tile the message")
	}
	if secs[0].Code != 1 {
		t.Fatal("dst prefix overwritten")
	}
	// Replace the annotations and copy the rest: the use SplitSections exists for.
	var out []byte
	for _, s := range secs[1:] {
		if s.Code == CodeMessageAnn {
			var err error
			out, err = encoding.AppendAny(encoding.AppendDescriptor(out, CodeMessageAnn),
				map[any]any{encoding.Symbol("x-opt-enqueued-time"): tsTime})
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		out = append(out, s.Raw...)
	}
	m := decodeMsg(t, out)
	if m.Annotations[encoding.Symbol("x-opt-enqueued-time")] != tsTime || m.Properties.MessageID != "msg-1" {
		t.Fatalf("rewritten message %#v", m)
	}
	if secs, err := SplitSections(nil, nil); err != nil || len(secs) != 0 {
		t.Fatalf("empty message: %v %v", secs, err)
	}
}

func TestUnpackBatch(t *testing.T) {
	inner1 := hx(t, described(0x73, list8(str8("m1")))+" "+described(0x75, vbin8([]byte("a"))))
	inner2 := hx(t, described(0x74, map8(str8("k"), "41"))+" "+described(0x75, vbin8([]byte("b"))))
	big := encodeMsg(t, &Message{Data: [][]byte{bytes.Repeat([]byte("z"), 400)}}) // needs vbin32 when nested
	// The outer message of format 0x80013700: its own annotations, then one
	// data section per inner message.
	outer := hx(t, strings.Join([]string{
		described(0x72, map8(sym8("x-opt-partition-key"), str8("p"))),
		described(0x75, vbin8(inner1)),
		described(0x75, vbin8(inner2)),
		fmt.Sprintf("00 53 75 b0 %08x %x", len(big), big),
	}, " "))
	got, err := UnpackBatch(outer)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || !bytes.Equal(got[0], inner1) || !bytes.Equal(got[1], inner2) || !bytes.Equal(got[2], big) {
		t.Fatalf("UnpackBatch = %d messages", len(got))
	}
	if m := decodeMsg(t, got[0]); m.Properties.MessageID != "m1" || string(m.Data[0]) != "a" {
		t.Fatalf("inner 1: %#v", m)
	}
	if m := decodeMsg(t, got[1]); m.ApplicationProperties["k"] != true || string(m.Data[0]) != "b" {
		t.Fatalf("inner 2: %#v", m)
	}
	// A batch built with our encoder unpacks the same way.
	built := encodeMsg(t, &Message{Annotations: map[any]any{encoding.Symbol("x-opt-partition-key"): "p"},
		Data: [][]byte{inner1, inner2, big}})
	if again, err := UnpackBatch(built); err != nil || len(again) != 3 || !bytes.Equal(again[2], big) {
		t.Fatalf("encoded batch: %d, %v", len(again), err)
	}
	// No data sections: no messages.
	if none, err := UnpackBatch(hx(t, described(0x77, "40"))); err != nil || len(none) != 0 {
		t.Fatalf("value-only batch: %v, %v", none, err)
	}
	// Malformed outer messages are errors.
	for _, bad := range []string{"ff", described(0x75, "a0 05 01"), described(0x10, "45")} {
		if _, err := UnpackBatch(hx(t, bad)); err == nil {
			t.Errorf("UnpackBatch(%s) succeeded", bad)
		}
	}
	if MessageFormatBatch != 0x80013700 {
		t.Fatal("batch format constant")
	}
}
