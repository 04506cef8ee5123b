package frames

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"testing"
	"time"

	"amqphub/amqp/encoding"
)

const fuzzMaxFrame = 1 << 20

// FuzzDecodeFrame parses arbitrary bytes as one frame. It must never
// panic, and a frame that decodes must re-encode to a frame that decodes
// to the same performative and re-encodes to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseFrameHeader(data, fuzzMaxFrame)
		if err != nil || int(h.Size) > len(data) {
			return
		}
		var d Decoder
		p, err := d.Decode(data[int(h.DataOff)*4 : h.Size])
		if err != nil {
			return
		}
		var payload []byte
		if tr, ok := p.(*Transfer); ok {
			payload = tr.Payload
		}
		enc, err := AppendFrame(nil, h.Type, h.Channel, p, payload)
		if err != nil {
			t.Fatalf("decoded %#v but cannot re-encode it: %v", p, err)
		}
		h2, err := ParseFrameHeader(enc, fuzzMaxFrame)
		if err != nil || h2.Size != uint32(len(enc)) || h2.Type != h.Type || h2.Channel != h.Channel {
			t.Fatalf("re-encoded header %+v: %v", h2, err)
		}
		var d2 Decoder
		p2, err := d2.Decode(enc[HeaderSize:])
		if err != nil {
			t.Fatalf("re-encoded % x does not decode: %v", enc, err)
		}
		if !sameDeep(reflect.ValueOf(canonical(p)), reflect.ValueOf(canonical(p2))) {
			t.Fatalf("round trip changed the performative\nfirst  %#v\nsecond %#v", p, p2)
		}
		var payload2 []byte
		if tr, ok := p2.(*Transfer); ok {
			payload2 = tr.Payload
		}
		enc2, err := AppendFrame(nil, h.Type, h.Channel, p2, payload2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n% x\n% x (%v)", enc, enc2, err)
		}
	})
}

// FuzzMessage decodes arbitrary bytes as a message, splits them into
// sections and unpacks them as a batch. A message that decodes must
// re-encode, decode to the same message and re-encode to the same bytes.
func FuzzMessage(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		err := m.UnmarshalAMQP(data)
		secs, serr := SplitSections(data, nil)
		_, _ = UnpackBatch(data)
		if serr == nil {
			var joined []byte
			for _, s := range secs {
				joined = append(joined, s.Raw...)
			}
			if !bytes.Equal(joined, data) {
				t.Fatalf("sections do not tile the input")
			}
		}
		if err != nil {
			return
		}
		if serr != nil {
			t.Fatalf("message decodes but SplitSections fails: %v", serr)
		}
		enc, err := m.AppendAMQP(nil)
		if err != nil {
			t.Fatalf("decoded %#v but cannot re-encode it: %v", m, err)
		}
		var m2 Message
		if err := m2.UnmarshalAMQP(enc); err != nil {
			t.Fatalf("re-encoded % x does not decode: %v", enc, err)
		}
		if !sameDeep(reflect.ValueOf(&m), reflect.ValueOf(&m2)) {
			t.Fatalf("round trip changed the message\nfirst  %#v\nsecond %#v", m, m2)
		}
		enc2, err := m2.AppendAMQP(nil)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n% x\n% x (%v)", enc, enc2, err)
		}
		if _, err := SplitSections(enc, nil); err != nil {
			t.Fatalf("SplitSections of our own encoding: %v", err)
		}
	})
}

// canonical maps a decoded performative to the form our encoder gives it
// back, where the encoder's documented conventions make them differ:
// a disposition's last equal to first is omitted (it is the default), an
// explicit max-frame-size of 0 (invalid; minimum is 512) reads as unset,
// an empty multi-symbol field is written as null, and an empty payload
// is no payload.
func canonical(p Performative) Performative {
	syms := func(s []encoding.Symbol) []encoding.Symbol {
		if len(s) == 0 {
			return nil
		}
		return s
	}
	switch v := p.(type) {
	case *Open:
		c := *v
		if c.MaxFrameSize == 0 {
			c.MaxFrameSize = 0xFFFFFFFF
		}
		c.OutgoingLocales, c.IncomingLocales = syms(c.OutgoingLocales), syms(c.IncomingLocales)
		c.OfferedCapabilities, c.DesiredCapabilities = syms(c.OfferedCapabilities), syms(c.DesiredCapabilities)
		return &c
	case *Begin:
		c := *v
		c.OfferedCapabilities, c.DesiredCapabilities = syms(c.OfferedCapabilities), syms(c.DesiredCapabilities)
		return &c
	case *Attach:
		c := *v
		c.OfferedCapabilities, c.DesiredCapabilities = syms(c.OfferedCapabilities), syms(c.DesiredCapabilities)
		if c.Source != nil {
			s := *c.Source
			s.Outcomes, s.Capabilities = syms(s.Outcomes), syms(s.Capabilities)
			c.Source = &s
		}
		if c.Target != nil {
			tg := *c.Target
			tg.Capabilities = syms(tg.Capabilities)
			c.Target = &tg
		}
		return &c
	case *Disposition:
		c := *v
		if c.HasLast && c.Last == c.First {
			c.HasLast = false
		}
		return &c
	case *Transfer:
		c := *v
		if len(c.Payload) == 0 {
			c.Payload = nil
		}
		return &c
	}
	return p
}

var timeType = reflect.TypeOf(time.Time{})

// sameDeep is reflect.DeepEqual except that floats compare by bit pattern
// (NaN equals itself), times by instant, and map entries under NaN keys,
// which cannot be looked up, are left to the byte comparison.
func sameDeep(a, b reflect.Value) bool {
	if a.IsValid() != b.IsValid() {
		return false
	}
	if !a.IsValid() {
		return true
	}
	if a.Type() != b.Type() {
		return false
	}
	if a.Type() == timeType {
		return a.Interface().(time.Time).Equal(b.Interface().(time.Time))
	}
	switch a.Kind() {
	case reflect.Float32, reflect.Float64:
		return math.Float64bits(a.Float()) == math.Float64bits(b.Float())
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameDeep(a.Elem(), b.Elem())
	case reflect.Struct:
		for i := 0; i < a.NumField(); i++ {
			if !sameDeep(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if a.IsNil() != b.IsNil() || a.Len() != b.Len() {
			return false
		}
		fallthrough
	case reflect.Array:
		for i := 0; i < a.Len(); i++ {
			if !sameDeep(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.IsNil() != b.IsNil() || a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			if kk := k; kk.Kind() == reflect.Interface {
				kk = kk.Elem()
				if (kk.Kind() == reflect.Float32 || kk.Kind() == reflect.Float64) && math.IsNaN(kk.Float()) {
					continue
				}
			}
			w := b.MapIndex(k)
			if !w.IsValid() || !sameDeep(a.MapIndex(k), w) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

func TestSameDeep(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		a, b any
		same bool
	}{
		{&Flow{}, &Flow{}, true},
		{&Flow{Drain: true}, &Flow{}, false},
		{map[any]any{"k": nan}, map[any]any{"k": nan}, true},
		{map[any]any{"k": 1.0}, map[any]any{"k": nan}, false},
		{map[any]any{"k": int32(1)}, map[any]any{"k": int64(1)}, false},
		{[]any{tsTime}, []any{tsTime.In(time.FixedZone("x", 3600))}, true},
		{[]byte{}, []byte(nil), false},
	} {
		if got := sameDeep(reflect.ValueOf(tc.a), reflect.ValueOf(tc.b)); got != tc.same {
			t.Errorf("sameDeep(%#v, %#v) = %v", tc.a, tc.b, got)
		}
	}
}

// frameSeeds are whole frames: every performative vector and round-trip
// case, transfers with payloads, and malformed headers and bodies.
func frameSeeds(t *testing.T) map[string][]byte {
	seeds := map[string][]byte{}
	add := func(name string, typ byte, p Performative, payload []byte) {
		f, err := AppendFrame(nil, typ, 1, p, payload)
		if err != nil {
			t.Fatal(err)
		}
		seeds[name] = f
	}
	for _, v := range perfVectors {
		typ := FrameAMQP
		if v.p.Code() >= CodeSASLMechanisms {
			typ = FrameSASL
		}
		seeds["vector-"+v.name] = hx(t, frame(typ, 1, v.hex))
	}
	add("transfer-telemetry", FrameAMQP, telemetryTransfer(), telemetryMessage(t))
	add("transfer-full-message", FrameAMQP, &Transfer{Handle: 0, DeliveryID: 0, HasDeliveryID: true, DeliveryTag: []byte{1}},
		hx(t, fullMessageHex()))
	add("flow-bench", FrameAMQP, &Flow{IncomingWindow: 1, NextOutgoingID: 2, OutgoingWindow: 3, Handle: 4, HasHandle: true,
		LinkCredit: 5, HasLinkCredit: true, Properties: map[any]any{encoding.Symbol("p"): 1.5}}, nil)
	src := &Source{Address: "amqps://hub/ConsumerGroups/$Default/Partitions/0",
		Filter: map[encoding.Symbol]any{"apache.org:selector-filter:string": &encoding.Described{
			Descriptor: encoding.Symbol("apache.org:selector-filter:string"),
			Value:      "amqp.annotation.x-opt-sequence-number > 10"}},
		DefaultOutcome: &encoding.Described{Descriptor: uint64(CodeAccepted), Value: []any{}},
		Outcomes:       []encoding.Symbol{"amqp:accepted:list"}}
	add("attach-filter", FrameAMQP, &Attach{Name: "r", Role: RoleReceiver, SenderSettleMode: SenderSettleMixed,
		Source: src, Target: &Target{Address: "t"}, InitialDeliveryCount: 1, HasInitialDelivery: true}, nil)
	add("detach-redirect", FrameAMQP, &Detach{Handle: 1, Closed: true, Error: &Error{Condition: "amqp:link:redirect",
		Info: map[any]any{encoding.Symbol("hostname"): "h", encoding.Symbol("port"): int32(5671)}}}, nil)
	seeds["heartbeat"] = hx(t, "00 00 00 08 02 00 00 00")
	seeds["extended-header"] = hx(t, "00 00 00 14 03 00 00 00 ff ff ff ff "+described(0x17, "45"))
	seeds["symbolic-open"] = hx(t, frame(FrameAMQP, 0, "00 "+sym8("amqp:open:list")+" "+list8(str8("c"))))
	seeds["bad-doff"] = hx(t, "00 00 00 0c 01 00 00 00 00 53 17 45")
	seeds["bad-type"] = hx(t, "00 00 00 0c 02 07 00 00 00 53 17 45")
	seeds["bad-size-small"] = hx(t, "00 00 00 04 02 00 00 00")
	seeds["bad-list-size"] = hx(t, frame(FrameAMQP, 0, "00 53 14 c0 03 01 43 40 00 53 75 a0 00"))
	seeds["bad-missing-handle"] = hx(t, frame(FrameAMQP, 0, described(0x14, "45")))
	seeds["bad-sasl-outcome"] = hx(t, frame(FrameSASL, 0, described(0x44, "45")))
	return seeds
}

// messageSeeds are encoded messages: every section, each body kind, id
// types, batches, and malformed sections.
func messageSeeds(t *testing.T) map[string][]byte {
	seeds := map[string][]byte{
		"full":                   hx(t, fullMessageHex()),
		"telemetry":              telemetryMessage(t),
		"symbolic":               hx(t, "00 "+sym8("amqp:data:binary")+" "+vbin8([]byte("x"))),
		"uuid-id":                hx(t, described(0x73, list8("98 123e4567e89b12d3a456426614174000", "40", "40", "40", "40", "53 07"))),
		"binary-id":              hx(t, described(0x73, list8(vbin8([]byte{1, 2})))+" "+described(0x77, "40")),
		"sequence":               hx(t, described(0x76, list8("55 01", str8("a")))+" "+described(0x76, "45")),
		"value-map":              hx(t, described(0x77, map8(str8("k"), "72 7f c0 00 00"))),
		"bad-app-properties-key": hx(t, described(0x74, map8(sym8("k"), "41"))),
		"bad-section-code":       hx(t, described(0x79, "45")),
		"bad-header-size":        hx(t, "00 53 70 c0 03 01 41 40"),
	}
	inner := hx(t, described(0x73, list8(str8("m1")))+" "+described(0x75, vbin8([]byte("a"))))
	batch, err := (&Message{Annotations: map[any]any{encoding.Symbol("x-opt-partition-key"): "p"},
		Data: [][]byte{inner, inner}}).AppendAMQP(nil)
	if err != nil {
		t.Fatal(err)
	}
	seeds["batch"] = batch
	for _, v := range []*Message{
		{Header: &Header{Durable: true, Priority: 4, TTL: time.Minute}, Value: []any{uint64(1), "x"}, HasValue: true},
		{DeliveryAnnotations: map[any]any{encoding.Symbol("x-opt-lock-token"): lockToken},
			Footer: map[any]any{encoding.Symbol("x-sig"): []byte{1}}, Data: [][]byte{{}}},
	} {
		b, err := v.AppendAMQP(nil)
		if err != nil {
			t.Fatal(err)
		}
		seeds[fmt.Sprintf("message-%d", len(seeds))] = b
	}
	return seeds
}

// TestFuzzSeedCorpus keeps the committed seed corpora in step with the
// generators. Regenerate with: AMQP_WRITE_CORPUS=1 go test -run TestFuzzSeedCorpus ./amqp/frames
func TestFuzzSeedCorpus(t *testing.T) {
	checkCorpus(t, "FuzzDecodeFrame", frameSeeds(t))
	checkCorpus(t, "FuzzMessage", messageSeeds(t))
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// checkCorpus writes (with AMQP_WRITE_CORPUS=1) or verifies the seed files
// of one fuzz target, in the format go test reads from testdata/fuzz.
func checkCorpus(t *testing.T, target string, seeds map[string][]byte) {
	dir := filepath.Join("testdata", "fuzz", target)
	write := os.Getenv("AMQP_WRITE_CORPUS") == "1"
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	names := make([]string, 0, len(seeds))
	for name := range seeds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		file := filepath.Join(dir, "seed-"+unsafeName.ReplaceAllString(name, "_"))
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seeds[name])
		if write {
			if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil || string(got) != content {
			t.Errorf("seed %s is missing or stale (%v); regenerate with AMQP_WRITE_CORPUS=1", file, err)
		}
	}
}
