package frames

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"amqphub/amqp/encoding"
)

// normalize clears differences that carry no meaning: a decoded transfer
// has an empty, non-nil payload when nothing follows the performative.
func normalize(p Performative) Performative {
	if t, ok := p.(*Transfer); ok && len(t.Payload) == 0 {
		c := *t
		c.Payload = nil
		return &c
	}
	return p
}

func decodeHex(t *testing.T, s string) (Performative, error) {
	t.Helper()
	var d Decoder
	return d.Decode(hx(t, s))
}

func encodePerf(t *testing.T, p Performative) []byte {
	t.Helper()
	b, err := p.AppendAMQP(nil)
	if err != nil {
		t.Fatalf("%T.AppendAMQP: %v", p, err)
	}
	return b
}

// perfVectors pairs performatives with their encoding, hand-written from
// part 2 (transport) and part 5 (security) of the spec: numeric
// descriptors as smallulong, fields in order, trailing nulls omitted.
var perfVectors = []struct {
	name string
	p    Performative
	hex  string
}{
	{"open/minimal", &Open{ContainerID: "c", MaxFrameSize: 0xFFFFFFFF, ChannelMax: 0xFFFF},
		described(0x10, list8(str8("c")))},
	{"open/limits", &Open{ContainerID: "c", Hostname: "h", MaxFrameSize: 65536, ChannelMax: 255, IdleTimeout: 30 * time.Second},
		described(0x10, list8(str8("c"), str8("h"), "70 00 01 00 00", "60 00 ff", "70 00 00 75 30"))},
	{"open/capabilities and properties", &Open{ContainerID: "c", MaxFrameSize: 0xFFFFFFFF, ChannelMax: 0xFFFF,
		OfferedCapabilities: []encoding.Symbol{"ANONYMOUS-RELAY"},
		Properties:          map[any]any{encoding.Symbol("product"): "amqphub"}},
		described(0x10, list8(str8("c"), "40", "40", "40", "40", "40", "40", symArray8("ANONYMOUS-RELAY"), "40",
			map8(sym8("product"), str8("amqphub"))))},
	{"begin/client", &Begin{NextOutgoingID: 1, IncomingWindow: 5000, OutgoingWindow: 5000, HandleMax: 0xFFFFFFFF},
		described(0x11, list8("40", "52 01", "70 00 00 13 88", "70 00 00 13 88"))},
	{"begin/reply", &Begin{RemoteChannel: 7, HasRemoteChannel: true, IncomingWindow: 10, OutgoingWindow: 10, HandleMax: 255},
		described(0x11, list8("60 00 07", "43", "52 0a", "52 0a", "52 ff"))},
	{"attach/minimal", &Attach{Name: "l", Role: RoleReceiver, SenderSettleMode: SenderSettleMixed},
		described(0x12, list8(str8("l"), "43", "41"))},
	{"attach/sender", &Attach{Name: "link", Handle: 1, Role: RoleSender,
		SenderSettleMode: SenderSettleSettled, ReceiverSettleMode: ReceiverSettleSecond,
		Source:               &Source{Address: "src"},
		Target:               &Target{Address: "/devices/d1/messages/events"},
		InitialDeliveryCount: 0, HasInitialDelivery: true, MaxMessageSize: 262144,
		Properties: map[any]any{encoding.Symbol("com.microsoft:client-version"): "x"}},
		described(0x12, list8(str8("link"), "52 01", "42", "50 01", "50 01",
			described(0x28, list8(str8("src"))),
			described(0x29, list8(str8("/devices/d1/messages/events"))),
			"40", "40", "43", "80 00 00 00 00 00 04 00 00", "40", "40",
			map8(sym8("com.microsoft:client-version"), str8("x"))))},
	{"flow/link", &Flow{IncomingWindow: 100, NextOutgoingID: 1, OutgoingWindow: 100,
		HasHandle: true, HasDeliveryCount: true, LinkCredit: 10, HasLinkCredit: true},
		described(0x13, list8("40", "52 64", "52 01", "52 64", "43", "43", "52 0a"))},
	{"flow/session", &Flow{NextIncomingID: 5, HasNextIncomingID: true, IncomingWindow: 2048, NextOutgoingID: 2, OutgoingWindow: 2048},
		described(0x13, list8("52 05", "70 00 00 08 00", "52 02", "70 00 00 08 00"))},
	{"flow/drain echo properties", &Flow{Handle: 2, HasHandle: true, DeliveryCount: 3, HasDeliveryCount: true,
		HasLinkCredit: true, Available: 4, HasAvailable: true, Drain: true, Echo: true,
		Properties: map[any]any{encoding.Symbol("k"): true}},
		described(0x13, list8("40", "43", "43", "43", "52 02", "52 03", "43", "52 04", "41", "41", map8(sym8("k"), "41")))},
	{"transfer/first", &Transfer{DeliveryID: 5, HasDeliveryID: true, DeliveryTag: []byte{1},
		HasMessageFormat: true, HasSettled: true},
		described(0x14, list8("43", "52 05", vbin8([]byte{1}), "43", "42"))},
	{"transfer/continuation", &Transfer{Handle: 3, More: true},
		described(0x14, list8("52 03", "40", "40", "40", "40", "41"))},
	{"transfer/batch settled", &Transfer{Handle: 2, DeliveryID: 256, HasDeliveryID: true,
		DeliveryTag: []byte("0123456789abcdef0123456789abcdef"), MessageFormat: MessageFormatBatch, HasMessageFormat: true,
		Settled: true, HasSettled: true, More: true, ReceiverSettleMode: ReceiverSettleSecond, HasRcvSettleMode: true,
		State: Accepted{}, Batchable: true},
		described(0x14, list8("52 02", "70 00 00 01 00", vbin8([]byte("0123456789abcdef0123456789abcdef")),
			"70 80 01 37 00", "41", "41", "50 01", described(0x24, "45"), "40", "40", "41"))},
	{"transfer/aborted resume", &Transfer{Handle: 1, Resume: true, Aborted: true},
		described(0x14, list8("52 01", "40", "40", "40", "40", "40", "40", "40", "41", "41"))},
	{"disposition/accepted", &Disposition{Role: RoleReceiver, First: 3, Last: 3, Settled: true, State: Accepted{}},
		described(0x15, list8("41", "52 03", "40", "41", described(0x24, "45")))},
	{"disposition/rejected range", &Disposition{Role: RoleReceiver, First: 3, Last: 9, HasLast: true, Settled: true,
		State: Rejected{Error: &Error{Condition: "amqp:not-allowed", Description: "no"}}},
		described(0x15, list8("41", "52 03", "52 09", "41",
			described(0x25, list8(described(0x1d, list8(sym8("amqp:not-allowed"), str8("no")))))))},
	{"disposition/released batchable", &Disposition{Role: RoleSender, Last: 1, HasLast: true, State: Released{}, Batchable: true},
		described(0x15, list8("42", "43", "52 01", "40", described(0x26, "45"), "41"))},
	{"disposition/modified", &Disposition{Role: RoleReceiver, First: 1, Last: 1, State: Modified{DeliveryFailed: true,
		UndeliverableHere: true, MessageAnnotations: map[any]any{encoding.Symbol("x-opt-a"): int64(1)}}},
		described(0x15, list8("41", "52 01", "40", "40",
			described(0x27, list8("41", "41", map8(sym8("x-opt-a"), "55 01")))))},
	{"disposition/received", &Disposition{Role: RoleReceiver, First: 1, Last: 1, State: Received{SectionNumber: 1}},
		described(0x15, list8("41", "52 01", "40", "40", described(0x23, list8("52 01", "44"))))},
	{"disposition/modified empty", &Disposition{Role: RoleReceiver, First: 1, Last: 1, State: Modified{}},
		described(0x15, list8("41", "52 01", "40", "40", described(0x27, "45")))},
	{"disposition/rejected no error", &Disposition{Role: RoleReceiver, First: 1, Last: 1, State: Rejected{}},
		described(0x15, list8("41", "52 01", "40", "40", described(0x25, "45")))},
	{"detach/closed with error", &Detach{Handle: 1, Closed: true,
		Error: &Error{Condition: "amqp:link:detach-forced", Description: "x"}},
		described(0x16, list8("52 01", "41", described(0x1d, list8(sym8("amqp:link:detach-forced"), str8("x")))))},
	{"detach/handle only", &Detach{}, described(0x16, list8("43"))},
	{"end/empty", &End{}, described(0x17, "45")},
	{"end/error", &End{Error: &Error{Condition: "amqp:session:window-violation"}},
		described(0x17, list8(described(0x1d, list8(sym8("amqp:session:window-violation")))))},
	{"close/empty", &Close{}, described(0x18, "45")},
	{"close/internal error", &Close{Error: &Error{Condition: "amqp:internal-error"}},
		described(0x18, list8(described(0x1d, list8(sym8("amqp:internal-error")))))},
	{"sasl-mechanisms", &SASLMechanisms{Mechanisms: []encoding.Symbol{"PLAIN", "ANONYMOUS"}},
		described(0x40, list8(symArray8("PLAIN", "ANONYMOUS")))},
	{"sasl-init", &SASLInit{Mechanism: "PLAIN", InitialResponse: []byte("\x00u\x00p"), Hostname: "h"},
		described(0x41, list8(sym8("PLAIN"), vbin8([]byte("\x00u\x00p")), str8("h")))},
	{"sasl-init/mechanism only", &SASLInit{Mechanism: "ANONYMOUS"}, described(0x41, list8(sym8("ANONYMOUS")))},
	{"sasl-challenge", &SASLChallenge{Challenge: []byte{1, 2}}, described(0x42, list8(vbin8([]byte{1, 2})))},
	{"sasl-response", &SASLResponse{Response: []byte{3}}, described(0x43, list8(vbin8([]byte{3})))},
	{"sasl-outcome/ok", &SASLOutcome{Result: SASLOK}, described(0x44, list8("50 00"))},
	{"sasl-outcome/auth with data", &SASLOutcome{Result: SASLAuth, AdditionalData: []byte("x")},
		described(0x44, list8("50 01", vbin8([]byte("x"))))},
}

func TestPerformativeVectors(t *testing.T) {
	for _, tc := range perfVectors {
		t.Run(tc.name, func(t *testing.T) {
			want := hx(t, tc.hex)
			if got := encodePerf(t, tc.p); !bytes.Equal(got, want) {
				t.Errorf("encode\n got % x\nwant % x", got, want)
			}
			got, err := decodeHex(t, tc.hex)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(normalize(got), tc.p) {
				t.Errorf("decode\n got %#v\nwant %#v", got, tc.p)
			}
			if got.Code() != tc.p.Code() {
				t.Errorf("Code() = %#x, want %#x", got.Code(), tc.p.Code())
			}
		})
	}
}

// Full round trips: every field set, encode then decode.
func TestPerformativeRoundTrip(t *testing.T) {
	longName := strings.Repeat("n", 300) // forces list32 and str32
	src := &Source{
		Address: "amqps://hub/ConsumerGroups/$Default/Partitions/1", Durable: 2, ExpiryPolicy: "never",
		Timeout: 60, Dynamic: true,
		DynamicNodeProperties: map[any]any{encoding.Symbol("lifetime-policy"): &encoding.Described{Descriptor: uint64(0x2b), Value: []any{}}},
		DistributionMode:      "copy",
		Filter: map[encoding.Symbol]any{"apache.org:selector-filter:string": &encoding.Described{
			Descriptor: encoding.Symbol("apache.org:selector-filter:string"), Value: "amqp.annotation.x-opt-offset > '100'"}},
		DefaultOutcome: &encoding.Described{Descriptor: uint64(0x24), Value: []any{}},
		Outcomes:       []encoding.Symbol{"amqp:accepted:list", "amqp:rejected:list"},
		Capabilities:   []encoding.Symbol{"queue"},
	}
	tgt := &Target{Address: "t", Durable: 1, ExpiryPolicy: "link-detach", Timeout: 5, Dynamic: true,
		DynamicNodeProperties: map[any]any{encoding.Symbol("x"): uint32(1)}, Capabilities: []encoding.Symbol{"topic"}}
	errFull := &Error{Condition: "amqp:link:redirect", Description: "moved",
		Info: map[any]any{encoding.Symbol("hostname"): "h2", encoding.Symbol("network-host"): "10.0.0.2",
			encoding.Symbol("port"): int32(5671), encoding.Symbol("address"): "amqps://h2/x"}}
	props := map[any]any{encoding.Symbol("a"): []any{uint64(1), "b"}}
	caps := []encoding.Symbol{"c1", "c2"}
	perfs := []Performative{
		&Open{ContainerID: longName, Hostname: "h", MaxFrameSize: 512, ChannelMax: 0, IdleTimeout: 1500 * time.Millisecond,
			OutgoingLocales: []encoding.Symbol{"en-US"}, IncomingLocales: []encoding.Symbol{"en-US", "de-DE"},
			OfferedCapabilities: caps, DesiredCapabilities: caps, Properties: props},
		&Begin{RemoteChannel: 65535, HasRemoteChannel: true, NextOutgoingID: 0xFFFFFFFF, IncomingWindow: 1, OutgoingWindow: 2,
			HandleMax: 0, OfferedCapabilities: caps, DesiredCapabilities: caps, Properties: props},
		&Attach{Name: longName, Handle: 0xFFFFFFFF, Role: RoleReceiver, SenderSettleMode: SenderSettleUnsettled,
			ReceiverSettleMode: ReceiverSettleSecond, Source: src, Target: tgt,
			Unsettled:           map[any]any{encoding.BinaryKey("tag"): &encoding.Described{Descriptor: uint64(0x24), Value: []any{}}},
			IncompleteUnsettled: true, InitialDeliveryCount: 7, HasInitialDelivery: true, MaxMessageSize: 1 << 40,
			OfferedCapabilities: caps, DesiredCapabilities: caps, Properties: props},
		&Attach{Name: "empty terminus", Role: RoleSender, SenderSettleMode: SenderSettleMixed, Source: &Source{}, Target: &Target{}},
		&Flow{NextIncomingID: 1, HasNextIncomingID: true, IncomingWindow: 2, NextOutgoingID: 3, OutgoingWindow: 4,
			Handle: 5, HasHandle: true, DeliveryCount: 6, HasDeliveryCount: true, LinkCredit: 7, HasLinkCredit: true,
			Available: 8, HasAvailable: true, Drain: true, Echo: true, Properties: props},
		&Transfer{Handle: 1, DeliveryID: 2, HasDeliveryID: true, DeliveryTag: []byte{}, MessageFormat: 3, HasMessageFormat: true,
			Settled: true, HasSettled: true, More: true, ReceiverSettleMode: ReceiverSettleFirst, HasRcvSettleMode: true,
			State: Received{SectionNumber: 1, SectionOffset: 1 << 33}, Resume: true, Aborted: true, Batchable: true},
		&Disposition{Role: RoleReceiver, First: 1, Last: 2, HasLast: true, Settled: true,
			State: Modified{DeliveryFailed: true, MessageAnnotations: props}, Batchable: true},
		&Disposition{Role: RoleReceiver, First: 1, Last: 1, State: Rejected{Error: errFull}},
		&Detach{Handle: 9, Closed: true, Error: errFull},
		&End{Error: errFull},
		&Close{Error: &Error{Condition: "amqp:connection:forced", Description: longName}},
		&SASLMechanisms{Mechanisms: []encoding.Symbol{"MSSBCBS", "PLAIN", "ANONYMOUS", "EXTERNAL"}},
		&SASLInit{Mechanism: "PLAIN", InitialResponse: []byte(longName), Hostname: "h"},
		&SASLChallenge{Challenge: []byte{}},
		&SASLResponse{Response: bytes.Repeat([]byte{1}, 1000)},
		&SASLOutcome{Result: SASLSysTemp, AdditionalData: []byte("retry")},
	}
	var d Decoder
	for _, p := range perfs {
		enc := encodePerf(t, p)
		got, err := d.Decode(enc)
		if err != nil {
			t.Errorf("%T: decode: %v", p, err)
			continue
		}
		if !reflect.DeepEqual(normalize(got), p) {
			t.Errorf("%T round trip\n got %#v\nwant %#v", p, got, p)
		}
		// AppendFrame + ParseFrameHeader carry it intact too.
		typ := FrameAMQP
		if p.Code() >= CodeSASLMechanisms {
			typ = FrameSASL
		}
		fr, err := AppendFrame(nil, typ, 3, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseFrameHeader(fr, 1<<20)
		if err != nil || h.Size != uint32(len(fr)) || h.Type != typ || h.Channel != 3 || !bytes.Equal(fr[8:], enc) {
			t.Errorf("%T: frame header %+v, %v", p, h, err)
		}
	}
}

// Fields after the last non-null one are not written; nulls before it are.
func TestTrailingNullsOmitted(t *testing.T) {
	tests := []struct {
		p     Performative
		count int
	}{
		{&Open{ContainerID: "c", MaxFrameSize: 0xFFFFFFFF, ChannelMax: 0xFFFF}, 1},
		{&Open{ContainerID: "c", MaxFrameSize: 0xFFFFFFFF, ChannelMax: 0xFFFF, Properties: map[any]any{}}, 10},
		{&Begin{HandleMax: 0xFFFFFFFF}, 4},
		{&Attach{Name: "l", SenderSettleMode: SenderSettleMixed}, 3},
		{&Attach{Name: "l", SenderSettleMode: SenderSettleMixed, MaxMessageSize: 1}, 11},
		{&Flow{}, 4},
		{&Flow{Echo: true}, 10},
		{&Transfer{}, 1},
		{&Transfer{Batchable: true}, 11},
		{&Disposition{}, 2},
		{&Disposition{First: 4, Last: 4, HasLast: true}, 2}, // last equal to first is the default
		{&Detach{}, 1},
		{&SASLInit{Mechanism: "x"}, 1},
		{&SASLOutcome{}, 1},
	}
	for _, tc := range tests {
		enc := encodePerf(t, tc.p)
		r := encoding.NewReader(enc)
		if _, _, err := r.ReadDescriptor(); err != nil {
			t.Fatal(err)
		}
		n, err := r.ReadListHeader()
		if err != nil || n != tc.count {
			t.Errorf("%T %+v: %d fields (%v), want %d: % x", tc.p, tc.p, n, err, tc.count, enc)
		}
	}
}

// Absent and null fields both take the spec default.
func TestDefaults(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		want Performative
	}{
		{"open absent", described(0x10, list8(str8("c"))),
			&Open{ContainerID: "c", MaxFrameSize: 4294967295, ChannelMax: 65535}},
		{"open null", described(0x10, list8(str8("c"), "40", "40", "40", "40", "40", "40", "40", "40", "40")),
			&Open{ContainerID: "c", MaxFrameSize: 4294967295, ChannelMax: 65535}},
		{"begin handle-max", described(0x11, list8("40", "43", "43", "43", "40")),
			&Begin{HandleMax: 4294967295}},
		{"attach settle modes absent", described(0x12, list8(str8("l"), "43", "42")),
			&Attach{Name: "l", SenderSettleMode: SenderSettleMixed, ReceiverSettleMode: ReceiverSettleFirst}},
		{"attach settle modes null", described(0x12, list8(str8("l"), "43", "42", "40", "40", "40", "40", "40", "40", "40", "40")),
			&Attach{Name: "l", SenderSettleMode: SenderSettleMixed, ReceiverSettleMode: ReceiverSettleFirst}},
		{"disposition last defaults to first", described(0x15, list8("41", "52 07")),
			&Disposition{Role: RoleReceiver, First: 7, Last: 7}},
		{"transfer optional fields", described(0x14, list8("43", "40", "40", "40", "40", "40", "40", "40", "40", "40", "40")),
			&Transfer{}},
		{"flow optional fields", described(0x13, list8("40", "43", "43", "43", "40", "40", "40", "40", "40", "40", "40")),
			&Flow{}},
		{"detach closed false", described(0x16, list8("43", "40", "40")), &Detach{}},
		{"sasl-outcome no data", described(0x44, list8("50 02", "40")), &SASLOutcome{Result: SASLSys}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeHex(t, tc.hex)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(got), tc.want) {
				t.Fatalf("\n got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestMandatoryFieldsMissing(t *testing.T) {
	errNull := described(0x1d, list8("40"))
	tests := map[string]string{
		"open container-id absent":     described(0x10, "45"),
		"open container-id null":       described(0x10, list8("40", str8("h"))),
		"begin windows absent":         described(0x11, list8("40", "43")),
		"begin outgoing-window null":   described(0x11, list8("40", "43", "43", "40")),
		"attach role absent":           described(0x12, list8(str8("l"), "43")),
		"attach name null":             described(0x12, list8("40", "43", "41")),
		"attach handle null":           described(0x12, list8(str8("l"), "40", "41")),
		"flow outgoing-window absent":  described(0x13, list8("40", "43", "43")),
		"flow incoming-window null":    described(0x13, list8("40", "40", "43", "43")),
		"transfer handle absent":       described(0x14, "45"),
		"transfer handle null":         described(0x14, list8("40", "52 01")),
		"disposition first absent":     described(0x15, list8("41")),
		"disposition role null":        described(0x15, list8("40", "43")),
		"detach handle absent":         described(0x16, "45"),
		"sasl-mechanisms absent":       described(0x40, "45"),
		"sasl-mechanisms null":         described(0x40, list8("40")),
		"sasl-mechanisms empty array":  described(0x40, list8("e0 02 00 a3")),
		"sasl-init mechanism absent":   described(0x41, "45"),
		"sasl-challenge absent":        described(0x42, "45"),
		"sasl-response null":           described(0x43, list8("40")),
		"sasl-outcome code absent":     described(0x44, "45"),
		"sasl-outcome code null":       described(0x44, list8("40", vbin8([]byte("x")))),
		"close error condition null":   described(0x18, list8(errNull)),
		"detach error condition null":  described(0x16, list8("43", "41", errNull)),
		"rejected error condition":     described(0x15, list8("41", "43", "40", "41", described(0x25, list8(errNull)))),
		"received section-offset":      described(0x15, list8("41", "43", "40", "40", described(0x23, list8("43")))),
		"received section-number null": described(0x15, list8("41", "43", "40", "40", described(0x23, list8("40", "44")))),
	}
	for name, in := range tests {
		_, err := decodeHex(t, in)
		if !errors.Is(err, ErrMissingField) {
			t.Errorf("%s: err=%v, want ErrMissingField", name, err)
		}
	}
}

// Fields beyond those the spec defines are skipped, whatever their type.
func TestUnknownFieldsSkipped(t *testing.T) {
	extra := []string{str8("future"), list8("41", "42"), map8(sym8("k"), "40"), described(0x77, "45")}
	tests := []struct {
		name   string
		fields []string
		code   byte
		want   Performative
	}{
		{"open", append([]string{str8("c"), "40", "40", "40", "40", "40", "40", "40", "40", "40"}, extra...), 0x10,
			&Open{ContainerID: "c", MaxFrameSize: 4294967295, ChannelMax: 65535}},
		{"begin", append([]string{"40", "43", "43", "43", "40", "40", "40", "40"}, extra...), 0x11,
			&Begin{HandleMax: 4294967295}},
		{"flow", append([]string{"40", "43", "43", "43", "40", "40", "40", "40", "40", "40", "40"}, extra...), 0x13, &Flow{}},
		{"transfer", append([]string{"52 01", "40", "40", "40", "40", "40", "40", "40", "40", "40", "40"}, extra...), 0x14,
			&Transfer{Handle: 1}},
		{"disposition", append([]string{"41", "43", "40", "40", "40", "40"}, extra...), 0x15,
			&Disposition{Role: RoleReceiver}},
		{"detach", append([]string{"43", "40", "40"}, extra...), 0x16, &Detach{}},
		{"end", append([]string{"40"}, extra...), 0x17, &End{}},
		{"sasl-outcome", append([]string{"50 00", "40"}, extra...), 0x44, &SASLOutcome{}},
	}
	for _, tc := range tests {
		got, err := decodeHex(t, described(tc.code, list8(tc.fields...)))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(normalize(got), tc.want) {
			t.Errorf("%s\n got %#v\nwant %#v", tc.name, got, tc.want)
		}
	}
	// In nested spec types too: error, source, target, delivery states.
	in := described(0x15, list8("41", "43", "40", "40",
		described(0x25, list8(described(0x1d, list8(sym8("amqp:x"), "40", "40", str8("future"))), "41"))))
	got, err := decodeHex(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if rej := got.(*Disposition).State.(Rejected); rej.Error.Condition != "amqp:x" {
		t.Fatalf("rejected = %#v", rej)
	}
	in = described(0x12, list8(str8("l"), "43", "41", "40", "40",
		described(0x28, list8(str8("s"), "40", "40", "40", "40", "40", "40", "40", "40", "40", "40", str8("future"))),
		described(0x29, list8(str8("t"), "40", "40", "40", "40", "40", "40", "41"))))
	got, err = decodeHex(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if a := got.(*Attach); a.Source.Address != "s" || a.Target.Address != "t" {
		t.Fatalf("attach = %#v", a)
	}
}

// Symbolic descriptors are as valid as numeric ones (part 1, 1.5).
func TestSymbolicDescriptors(t *testing.T) {
	in := "00 " + sym8("amqp:open:list") + " " + list8(str8("c"))
	got, err := decodeHex(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := got.(*Open); !ok || o.ContainerID != "c" {
		t.Fatalf("got %#v", got)
	}
	in = described(0x15, list8("41", "43", "40", "41", "00 "+sym8("amqp:accepted:list")+" 45"))
	if got, err = decodeHex(t, in); err != nil || got.(*Disposition).State != (Accepted{}) {
		t.Fatalf("accepted: %#v, %v", got, err)
	}
	in = described(0x12, list8(str8("l"), "43", "41", "40", "40", "00 "+sym8("amqp:source:list")+" "+list8(str8("s"))))
	if got, err = decodeHex(t, in); err != nil || got.(*Attach).Source.Address != "s" {
		t.Fatalf("source: %#v, %v", got, err)
	}
	if _, err = decodeHex(t, "00 "+sym8("amqp:nonsense:list")+" 45"); err == nil {
		t.Fatal("unknown symbolic descriptor decoded")
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := map[string]string{
		"empty body":                "",
		"not described":             list8(str8("c")),
		"descriptor truncated":      "00 53",
		"descriptor is a string":    "00 a1 01 78 45",
		"body is not a list":        described(0x10, str8("c")),
		"unknown performative":      described(0x19, "45"),
		"delivery state as frame":   described(0x24, "45"),
		"trailing bytes after open": described(0x10, list8(str8("c"))) + " 40",
		"list size beyond fields":   "00 53 10 c0 05 01 a1 01 63 40",
		"field runs past list size": "00 53 14 c0 01 01 52 01",
		// Without the size check, the stray 40 would become the payload's first byte.
		"transfer list size beyond fields": "00 53 14 c0 03 01 43 40 00 53 75 a0 00",
		"container-id wrong type":          described(0x10, list8("52 01")),
		"container-id invalid utf8":        described(0x10, list8("a1 01 ff")),
		"handle wrong type":                described(0x14, list8(str8("1"))),
		"handle overflows uint":            described(0x14, list8("80 00 00 00 01 00 00 00 00")),
		"channel-max overflows":            described(0x10, list8(str8("c"), "40", "40", "70 00 01 00 00")),
		"delivery tag over 32 bytes":       described(0x14, list8("43", "43", vbin8(bytes.Repeat([]byte{1}, 33)))),
		"snd-settle-mode 3":                described(0x12, list8(str8("l"), "43", "41", "50 03")),
		"rcv-settle-mode 2":                described(0x12, list8(str8("l"), "43", "41", "40", "50 02")),
		"source with target code":          described(0x12, list8(str8("l"), "43", "41", "40", "40", described(0x29, "45"))),
		"filter key not symbol":            described(0x12, list8(str8("l"), "43", "41", "40", "40", described(0x28, list8("40", "40", "40", "40", "40", "40", "40", map8("52 01", "40"))))),
		"state of unknown code":            described(0x15, list8("41", "43", "40", "40", described(0x30, "45"))),
		"state not described":              described(0x15, list8("41", "43", "40", "40", "45")),
		"state list size mismatch":         described(0x15, list8("41", "43", "40", "40", "00 53 24 c0 03 01 40")),
		"error info not a map":             described(0x18, list8(described(0x1d, list8(sym8("x"), "40", "45")))),
		"error with wrong descriptor":      described(0x18, list8(described(0x1e, list8(sym8("x"))))),
		"mechanisms not symbols":           described(0x40, list8("e0 03 01 50 01")),
		"sasl-outcome code overflow":       described(0x44, list8("60 01 00")),
		"truncated list":                   "00 53 10 c0 05 01 a1 01",
	}
	for name, in := range tests {
		if p, err := decodeHex(t, in); err == nil {
			t.Errorf("%s: decoded %#v, want error", name, p)
		}
	}
}

// The Decoder reuses its structs: a second decode of the same performative
// starts from zero, so flags from the first do not leak.
func TestDecoderReuse(t *testing.T) {
	var d Decoder
	first, err := d.Decode(hx(t, described(0x13, list8("52 05", "43", "43", "43", "52 01", "43", "52 0a", "40", "41"))))
	if err != nil {
		t.Fatal(err)
	}
	if f := first.(*Flow); !f.HasHandle || !f.HasLinkCredit || !f.Drain {
		t.Fatalf("first flow %#v", f)
	}
	second, err := d.Decode(hx(t, described(0x13, list8("40", "43", "43", "43"))))
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("Decoder did not reuse its Flow")
	}
	if !reflect.DeepEqual(second, &Flow{}) {
		t.Errorf("second flow kept old fields: %#v", second)
	}
	// Transfer payload follows the performative and aliases the body.
	body := hx(t, described(0x14, list8("43"))+" 00 53 75 a0 01 61")
	p, err := d.Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	tr := p.(*Transfer)
	if !bytes.Equal(tr.Payload, hx(t, "00 53 75 a0 01 61")) {
		t.Fatalf("payload % x", tr.Payload)
	}
	body[len(body)-1] = 'b'
	if tr.Payload[len(tr.Payload)-1] != 'b' {
		t.Error("payload does not alias the frame body")
	}
}

func TestSourceFilter(t *testing.T) {
	const key = "apache.org:selector-filter:string"
	const expr = "amqp.annotation.x-opt-sequence-number > 10"
	filterValues := map[string]struct {
		hex  string
		desc any
	}{
		"symbolic descriptor": {"00 " + sym8(key) + " " + str8(expr), encoding.Symbol(key)},
		// The numeric form of the same filter: domain 0x468C, id 0x00000004.
		"numeric descriptor": {"00 80 00 00 46 8c 00 00 00 04 " + str8(expr), uint64(0x0000468C00000004)},
	}
	for name, fv := range filterValues {
		t.Run(name, func(t *testing.T) {
			src := described(0x28, list8(str8("amqps://hub/$management"), "40", "40", "40", "40", "40", "40",
				map8(sym8(key), fv.hex)))
			got, err := decodeHex(t, described(0x12, list8(str8("r"), "43", "41", "40", "40", src)))
			if err != nil {
				t.Fatal(err)
			}
			s := got.(*Attach).Source
			v, ok := s.Filter[key]
			if !ok {
				t.Fatalf("filter map %#v lacks %s", s.Filter, key)
			}
			d, ok := v.(*encoding.Described)
			if !ok {
				t.Fatalf("filter value is %T, want *encoding.Described", v)
			}
			if d.Descriptor != fv.desc || d.Value != expr {
				t.Fatalf("filter = %#v", d)
			}
			// Re-encoding keeps the filter as it was.
			enc := encodePerf(t, got.(*Attach))
			again, err := (&Decoder{}).Decode(enc)
			if err != nil || !reflect.DeepEqual(again.(*Attach).Source, s) {
				t.Fatalf("re-decoded %#v, %v", again, err)
			}
		})
	}
	// Filter keys sent as strings are accepted as symbols.
	src := described(0x28, list8("40", "40", "40", "40", "40", "40", "40", map8(str8("f"), "41")))
	got, err := decodeHex(t, described(0x12, list8(str8("r"), "43", "41", "40", "40", src)))
	if err != nil || got.(*Attach).Source.Filter["f"] != true {
		t.Fatalf("string filter key: %#v, %v", got, err)
	}
	// Addresses sent as symbols are accepted.
	src = described(0x28, list8(sym8("addr")))
	got, err = decodeHex(t, described(0x12, list8(str8("r"), "43", "41", "40", "40", src)))
	if err != nil || got.(*Attach).Source.Address != "addr" {
		t.Fatalf("symbol address: %#v, %v", got, err)
	}
}

// An IoT Hub style link redirect: the info map carries where to go.
func TestErrorInfoRedirect(t *testing.T) {
	info := map8(
		sym8("hostname"), str8("iothub-ns-x.servicebus.windows.net"),
		sym8("network-host"), str8("10.1.2.3"),
		sym8("port"), "71 00 00 16 27",
		sym8("address"), str8("amqps://iothub-ns-x.servicebus.windows.net/hub/$management"),
	)
	in := described(0x16, list8("43", "41", described(0x1d, list8(sym8("amqp:link:redirect"), str8("redirect"), info))))
	got, err := decodeHex(t, in)
	if err != nil {
		t.Fatal(err)
	}
	e := got.(*Detach).Error
	want := &Error{Condition: "amqp:link:redirect", Description: "redirect", Info: map[any]any{
		encoding.Symbol("hostname"):     "iothub-ns-x.servicebus.windows.net",
		encoding.Symbol("network-host"): "10.1.2.3",
		encoding.Symbol("port"):         int32(5671),
		encoding.Symbol("address"):      "amqps://iothub-ns-x.servicebus.windows.net/hub/$management",
	}}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("\n got %#v\nwant %#v", e, want)
	}
	if e.Error() != "amqp:link:redirect: redirect" || (&Error{Condition: "c"}).Error() != "c" {
		t.Fatalf("Error() = %q", e.Error())
	}
	// Round trip through our encoder.
	again, err := (&Decoder{}).Decode(encodePerf(t, got.(*Detach)))
	if err != nil || !reflect.DeepEqual(again.(*Detach).Error, want) {
		t.Fatalf("round trip %#v, %v", again, err)
	}
}

func TestDecodeStateDirect(t *testing.T) {
	for in, want := range map[string]DeliveryState{
		"40":                                    nil,
		described(0x24, "45"):                   Accepted{},
		described(0x24, list8("40", str8("x"))): Accepted{}, // unknown fields skipped
		described(0x26, "45"):                   Released{},
		described(0x23, list8("52 02", "80 00 00 00 01 00 00 00 00")): Received{SectionNumber: 2, SectionOffset: 1 << 32},
	} {
		r := encoding.NewReader(hx(t, in))
		got, err := DecodeState(r)
		if err != nil || !reflect.DeepEqual(got, want) || r.Len() != 0 {
			t.Errorf("DecodeState(%s) = %#v, %v (left %d); want %#v", in, got, err, r.Len(), want)
		}
	}
}

func TestRoleString(t *testing.T) {
	if RoleSender.String() != "sender" || RoleReceiver.String() != "receiver" {
		t.Fatal(RoleSender.String(), RoleReceiver.String())
	}
}
