package frames

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
)

// Interop with an independent implementation: github.com/Azure/go-amqp
// (the client library devices and services use). Each case describes one
// message twice, as a go-amqp Message and as ours.
//
//   - go-amqp encodes, we decode: we must get exactly our description.
//   - we encode, go-amqp decodes: go-amqp must see the same message it sees
//     when it decodes its own encoding.
func TestGoAMQPInterop(t *testing.T) {
	ptr := func(s string) *string { return &s }
	ts := time.Date(2025, 3, 4, 5, 6, 7, 890e6, time.UTC)
	uuid := [16]byte{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	seq := uint32(9)
	payload := []byte(`{"temperature":21.5,"humidity":60}`)
	big := bytes.Repeat([]byte("b"), 70000)
	long := strings.Repeat("l", 300)

	cases := []struct {
		name string
		go_  *amqp.Message
		ours *Message
	}{
		{"telemetry",
			&amqp.Message{
				Properties: &amqp.MessageProperties{MessageID: "msg-1", To: ptr("/devices/d1/messages/events"),
					ContentType: ptr("application/json"), ContentEncoding: ptr("utf-8"), CreationTime: &ts},
				Annotations:           amqp.Annotations{"iothub-connection-device-id": "d1"},
				ApplicationProperties: map[string]any{"temp": 21.5, "alert": true, "count": int64(3), "unit": "C"},
				Data:                  [][]byte{payload},
			},
			&Message{
				Properties: &Properties{MessageID: "msg-1", To: "/devices/d1/messages/events",
					ContentType: "application/json", ContentEncoding: "utf-8", CreationTime: ts},
				Annotations:           map[any]any{encoding.Symbol("iothub-connection-device-id"): "d1"},
				ApplicationProperties: map[string]any{"temp": 21.5, "alert": true, "count": int64(3), "unit": "C"},
				Data:                  [][]byte{payload},
			}},
		{"ulong message-id, uuid correlation-id",
			&amqp.Message{Properties: &amqp.MessageProperties{MessageID: uint64(42), CorrelationID: amqp.UUID(uuid)},
				Data: [][]byte{{1}}},
			&Message{Properties: &Properties{MessageID: uint64(42), CorrelationID: encoding.UUID(uuid)},
				Data: [][]byte{{1}}}},
		{"large ulong message-id",
			&amqp.Message{Properties: &amqp.MessageProperties{MessageID: uint64(1 << 60)}, Data: [][]byte{{1}}},
			&Message{Properties: &Properties{MessageID: uint64(1 << 60)}, Data: [][]byte{{1}}}},
		{"binary message-id, string correlation-id",
			&amqp.Message{Properties: &amqp.MessageProperties{MessageID: []byte{0xca, 0xfe}, CorrelationID: "corr"},
				Data: [][]byte{{1}}},
			&Message{Properties: &Properties{MessageID: []byte{0xca, 0xfe}, CorrelationID: "corr"},
				Data: [][]byte{{1}}}},
		{"uuid message-id",
			&amqp.Message{Properties: &amqp.MessageProperties{MessageID: amqp.UUID(uuid)}, Value: "v"},
			&Message{Properties: &Properties{MessageID: encoding.UUID(uuid)}, Value: "v", HasValue: true}},
		{"every property",
			&amqp.Message{Properties: &amqp.MessageProperties{MessageID: long, UserID: []byte("user"), To: ptr("to"),
				Subject: ptr("subject"), ReplyTo: ptr("reply"), CorrelationID: "c", ContentType: ptr("text/plain"),
				ContentEncoding: ptr("gzip"), AbsoluteExpiryTime: &ts, CreationTime: &ts, GroupID: ptr("g"),
				GroupSequence: &seq, ReplyToGroupID: ptr("rg")}, Data: [][]byte{{1}, {2}, {3}}},
			&Message{Properties: &Properties{MessageID: long, UserID: []byte("user"), To: "to", Subject: "subject",
				ReplyTo: "reply", CorrelationID: "c", ContentType: "text/plain", ContentEncoding: "gzip",
				AbsoluteExpiryTime: ts, CreationTime: ts, GroupID: "g", GroupSequence: 9, ReplyToGroupID: "rg"},
				Data: [][]byte{{1}, {2}, {3}}}},
		{"header",
			&amqp.Message{Header: &amqp.MessageHeader{Durable: true, Priority: 9, TTL: 90 * time.Second,
				FirstAcquirer: true, DeliveryCount: 3}, Data: [][]byte{{1}}},
			&Message{Header: &Header{Durable: true, Priority: 9, TTL: 90 * time.Second, FirstAcquirer: true,
				DeliveryCount: 3}, Data: [][]byte{{1}}}},
		{"header with default priority",
			&amqp.Message{Header: &amqp.MessageHeader{Priority: 4}, Data: [][]byte{{1}}},
			&Message{Header: &Header{Priority: 4}, Data: [][]byte{{1}}}},
		{"amqp-value map",
			&amqp.Message{Value: map[string]any{"a": int32(1), "b": "x"}},
			&Message{Value: map[any]any{"a": int32(1), "b": "x"}, HasValue: true}},
		{"amqp-value long",
			&amqp.Message{Value: int64(-5)},
			&Message{Value: int64(-5), HasValue: true}},
		{"amqp-sequence",
			&amqp.Message{Sequence: [][]any{{"a", int64(1)}, {true}}},
			&Message{Sequence: [][]any{{"a", int64(1)}, {true}}}},
		{"delivery annotations and footer",
			&amqp.Message{DeliveryAnnotations: amqp.Annotations{"x-opt-lock-token": amqp.UUID(uuid)},
				Annotations: amqp.Annotations{"x-opt-sequence-number": int64(12), int64(7): "int key"},
				Footer:      amqp.Annotations{"x-sig": []byte{1, 2}}, Data: [][]byte{{1}}},
			&Message{DeliveryAnnotations: map[any]any{encoding.Symbol("x-opt-lock-token"): encoding.UUID(uuid)},
				Annotations: map[any]any{encoding.Symbol("x-opt-sequence-number"): int64(12), int64(7): "int key"},
				Footer:      map[any]any{encoding.Symbol("x-sig"): []byte{1, 2}}, Data: [][]byte{{1}}}},
		{"application property types",
			&amqp.Message{ApplicationProperties: map[string]any{
				"u8": uint8(1), "u16": uint16(2), "u32": uint32(3), "u64": uint64(4),
				"i8": int8(-1), "i16": int16(-2), "i32": int32(-3), "i64": int64(-4),
				"f32": float32(1.5), "f64": 2.5, "ts": ts, "uuid": amqp.UUID(uuid), "bin": []byte{9},
				"str": long, "t": true, "f": false, "null": nil,
			}, Data: [][]byte{{1}}},
			&Message{ApplicationProperties: map[string]any{
				"u8": uint8(1), "u16": uint16(2), "u32": uint32(3), "u64": uint64(4),
				"i8": int8(-1), "i16": int16(-2), "i32": int32(-3), "i64": int64(-4),
				"f32": float32(1.5), "f64": 2.5, "ts": ts, "uuid": encoding.UUID(uuid), "bin": []byte{9},
				"str": long, "t": true, "f": false, "null": nil,
			}, Data: [][]byte{{1}}}},
		{"large data section",
			&amqp.Message{Data: [][]byte{big}},
			&Message{Data: [][]byte{big}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// go-amqp encodes, we decode.
			theirs, err := tc.go_.MarshalBinary()
			if err != nil {
				t.Fatalf("go-amqp MarshalBinary: %v", err)
			}
			var got Message
			if err := got.UnmarshalAMQP(theirs); err != nil {
				t.Fatalf("our UnmarshalAMQP of go-amqp's % x: %v", theirs[:min(len(theirs), 64)], err)
			}
			if !reflect.DeepEqual(&got, tc.ours) {
				t.Errorf("we decoded go-amqp's encoding as\n%#v\nwant\n%#v", &got, tc.ours)
			}
			secs, err := SplitSections(theirs, nil)
			if err != nil || len(secs) == 0 {
				t.Errorf("SplitSections of go-amqp's encoding: %v", err)
			}

			// We encode, go-amqp decodes.
			ours, err := tc.ours.AppendAMQP(nil)
			if err != nil {
				t.Fatalf("our AppendAMQP: %v", err)
			}
			var fromOurs, fromTheirs amqp.Message
			if err := fromOurs.UnmarshalBinary(ours); err != nil {
				t.Fatalf("go-amqp UnmarshalBinary of our % x: %v", ours[:min(len(ours), 64)], err)
			}
			if err := fromTheirs.UnmarshalBinary(theirs); err != nil {
				t.Fatalf("go-amqp UnmarshalBinary of its own encoding: %v", err)
			}
			if !reflect.DeepEqual(fromOurs, fromTheirs) {
				t.Errorf("go-amqp decoded our encoding as\n%#v\nbut its own as\n%#v", fromOurs, fromTheirs)
			}
		})
	}
}

// A batch (format 0x80013700) whose inner messages go-amqp encoded.
func TestGoAMQPBatch(t *testing.T) {
	var inner [][]byte
	for _, body := range []string{"one", "two", "three"} {
		b, err := (&amqp.Message{
			Properties:            &amqp.MessageProperties{MessageID: body},
			ApplicationProperties: map[string]any{"n": int32(len(body))},
			Data:                  [][]byte{[]byte(body)},
		}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		inner = append(inner, b)
	}
	outer, err := (&amqp.Message{
		Annotations: amqp.Annotations{"x-opt-partition-key": "pk"},
		Data:        inner,
	}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := UnpackBatch(outer)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("UnpackBatch: %d, %v", len(msgs), err)
	}
	for i, raw := range msgs {
		var m Message
		if err := m.UnmarshalAMQP(raw); err != nil {
			t.Fatal(err)
		}
		want := []string{"one", "two", "three"}[i]
		if m.Properties.MessageID != want || string(m.Data[0]) != want || m.ApplicationProperties["n"] != int32(len(want)) {
			t.Errorf("inner %d: %#v", i, m)
		}
	}
}
