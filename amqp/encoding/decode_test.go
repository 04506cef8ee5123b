package encoding

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"testing"
	"time"
)

// decodeVectors holds one hand-written encoding per row of the primitive
// encoding tables in OASIS AMQP 1.0 part 1 (section 1.6), every form of
// every type, with the value the decoder must produce.
var decodeVectors = []struct {
	name string
	in   string
	want any
}{
	// 1.6.1 null
	{"null", "40", nil},
	// 1.6.2 boolean: three forms
	{"boolean/true", "41", true},
	{"boolean/false", "42", false},
	{"boolean/0x56 true", "56 01", true},
	{"boolean/0x56 false", "56 00", false},
	// 1.6.3 ubyte, 1.6.4 ushort
	{"ubyte", "50 ff", uint8(255)},
	{"ushort", "60 ff fe", uint16(65534)},
	// 1.6.5 uint: uint, smalluint, uint0
	{"uint", "70 ff ff ff ff", uint32(math.MaxUint32)},
	{"uint/smalluint", "52 07", uint32(7)},
	{"uint/uint0", "43", uint32(0)},
	// 1.6.6 ulong: ulong, smallulong, ulong0
	{"ulong", "80 01 02 03 04 05 06 07 08", uint64(0x0102030405060708)},
	{"ulong/smallulong", "53 ff", uint64(255)},
	{"ulong/ulong0", "44", uint64(0)},
	// 1.6.7-1.6.10 signed integers, two's complement, network order
	{"byte", "51 80", int8(-128)},
	{"short", "61 80 00", int16(math.MinInt16)},
	{"int", "71 80 00 00 00", int32(math.MinInt32)},
	{"int/smallint", "54 ff", int32(-1)},
	{"long", "81 80 00 00 00 00 00 00 00", int64(math.MinInt64)},
	{"long/smalllong", "55 80", int64(-128)},
	{"long/smalllong positive", "55 7f", int64(127)},
	// 1.6.11-1.6.12 IEEE 754 binary32/binary64
	{"float", "72 3f c0 00 00", float32(1.5)},
	{"float/negative zero", "72 80 00 00 00", float32(math.Copysign(0, -1))},
	{"float/NaN", "72 7f c0 00 00", math.Float32frombits(0x7fc00000)},
	{"double", "82 40 09 21 fb 54 44 2d 18", math.Pi},
	// 1.6.13-1.6.15 decimals, kept raw
	{"decimal32", "74 01 02 03 04", Decimal32{1, 2, 3, 4}},
	{"decimal64", "84 01 02 03 04 05 06 07 08", Decimal64{1, 2, 3, 4, 5, 6, 7, 8}},
	{"decimal128", "94 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f",
		Decimal128{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}},
	// 1.6.16 char: UTF-32BE
	{"char/ascii", "73 00 00 00 41", Char('A')},
	{"char/astral", "73 00 01 f6 00", Char(0x1f600)},
	// 1.6.17 timestamp: ms since the Unix epoch, signed
	{"timestamp/epoch", "83 00 00 00 00 00 00 00 00", time.Unix(0, 0).UTC()},
	{"timestamp", "83 00 00 01 8c c8 20 db 2e", time.Date(2024, 1, 2, 3, 4, 5, 678e6, time.UTC)},
	{"timestamp/before epoch", "83 ff ff fd fd ae 01 dc 00", time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)},
	{"timestamp/-1ms", "83 ff ff ff ff ff ff ff ff", time.Date(1969, 12, 31, 23, 59, 59, 999e6, time.UTC)},
	// 1.6.18 uuid
	{"uuid", "98 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff",
		UUID{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}},
	// 1.6.19 binary: vbin8, vbin32
	{"binary/vbin8", "a0 03 01 02 03", []byte{1, 2, 3}},
	{"binary/vbin8 empty", "a0 00", []byte{}},
	{"binary/vbin32", "b0 00 00 00 03 01 02 03", []byte{1, 2, 3}},
	// 1.6.20 string: str8-utf8, str32-utf8
	{"string/str8", "a1 05 68 65 6c 6c 6f", "hello"},
	{"string/str8 utf8", "a1 02 c3 a9", "é"},
	{"string/str8 empty", "a1 00", ""},
	{"string/str32", "b1 00 00 00 05 68 65 6c 6c 6f", "hello"},
	// 1.6.21 symbol: sym8, sym32
	{"symbol/sym8", "a3 03 66 6f 6f", Symbol("foo")},
	{"symbol/sym32", "b3 00 00 00 03 66 6f 6f", Symbol("foo")},
	// 1.6.22 list: list0, list8, list32 (size counts the count field)
	{"list/list0", "45", []any{}},
	{"list/list8", "c0 03 02 41 42", []any{true, false}},
	{"list/list32", "d0 00 00 00 06 00 00 00 02 41 42", []any{true, false}},
	{"list/nested", "c0 06 02 c0 02 01 40 45", []any{[]any{nil}, []any{}}},
	// 1.6.23 map: map8, map32 (count is keys plus values)
	{"map/map8 empty", "c1 01 00", map[any]any{}},
	{"map/map8", "c1 05 02 a3 01 6b 41", map[any]any{Symbol("k"): true}},
	{"map/map32", "d1 00 00 00 08 00 00 00 02 a3 01 6b 41", map[any]any{Symbol("k"): true}},
	{"map/binary key", "c1 05 02 a0 01 07 40", map[any]any{BinaryKey("\x07"): nil}},
	{"map/mixed keys", "c1 0b 06 53 01 42 a1 01 61 43 54 ff 40",
		map[any]any{uint64(1): false, "a": uint32(0), int32(-1): nil}},
	// 1.6.24 array: array8, array32, one shared element constructor
	{"array/array8 ubyte", "e0 04 02 50 01 02", Array{Elements: []any{uint8(1), uint8(2)}}},
	{"array/array32 ubyte", "f0 00 00 00 07 00 00 00 02 50 01 02", Array{Elements: []any{uint8(1), uint8(2)}}},
	{"array/empty", "e0 02 00 40", Array{Elements: []any{}}},
	{"array/boolean", "e0 05 03 56 01 00 01", Array{Elements: []any{true, false, true}}},
	{"array/smalluint", "e0 04 02 52 00 ff", Array{Elements: []any{uint32(0), uint32(255)}}},
	{"array/int", "e0 0a 02 71 ff ff ff ff 00 00 01 00", Array{Elements: []any{int32(-1), int32(256)}}},
	{"array/str8", "e0 07 02 a1 02 68 69 01 21", Array{Elements: []any{"hi", "!"}}},
	{"array/sym32", "f0 00 00 00 0f 00 00 00 02 b3 00 00 00 01 61 00 00 00 01 62",
		Array{Elements: []any{Symbol("a"), Symbol("b")}}},
	{"array/lists", "e0 08 02 c0 02 01 41 02 01 42", Array{Elements: []any{[]any{true}, []any{false}}}},
	{"array/maps", "e0 06 02 c1 01 00 01 00", Array{Elements: []any{map[any]any{}, map[any]any{}}}},
	{"array/arrays", "e0 08 02 e0 02 01 40 02 01 40",
		Array{Elements: []any{Array{Elements: []any{nil}}, Array{Elements: []any{nil}}}}},
	{"array/uuid", "e0 12 01 98 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff",
		Array{Elements: []any{UUID{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}}}},
	// zero-width element constructors: the count alone says how many
	{"array/zero-width null", "e0 02 03 40", Array{Elements: []any{nil, nil, nil}}},
	{"array/zero-width true", "e0 02 02 41", Array{Elements: []any{true, true}}},
	{"array/zero-width uint0", "e0 02 02 43", Array{Elements: []any{uint32(0), uint32(0)}}},
	{"array/zero-width list0", "e0 02 02 45", Array{Elements: []any{[]any{}, []any{}}}},
	// arrays of described types: the descriptor is part of the constructor
	{"array/described symbolic", "e0 08 02 00 a3 01 78 50 01 02", Array{
		Descriptor: Symbol("x"),
		Elements:   []any{&Described{Symbol("x"), uint8(1)}, &Described{Symbol("x"), uint8(2)}},
	}},
	{"array/described numeric", "e0 09 02 00 53 24 c0 01 00 01 00", Array{
		Descriptor: uint64(0x24),
		Elements:   []any{&Described{uint64(0x24), []any{}}, &Described{uint64(0x24), []any{}}},
	}},
	// 1.2 described types: kept with their descriptor, known or not
	{"described/numeric", "00 53 77 a1 02 68 69", &Described{uint64(0x77), "hi"}},
	{"described/ulong descriptor", "00 80 00 00 00 00 00 00 00 24 45", &Described{uint64(0x24), []any{}}},
	{"described/ulong0 descriptor", "00 44 40", &Described{uint64(0), nil}},
	{"described/symbolic", "00 a3 21 61 70 61 63 68 65 2e 6f 72 67 3a 73 65 6c 65 63 74 6f 72 2d 66 69 6c 74 65 72 3a 73 74 72 69 6e 67 a1 01 78",
		&Described{Symbol("apache.org:selector-filter:string"), "x"}},
	{"described/unknown vendor code", "00 80 00 00 01 37 00 00 00 01 c0 02 01 41",
		&Described{uint64(0x0000013700000001), []any{true}}},
	{"described/nested", "00 53 01 00 53 02 40", &Described{uint64(1), &Described{uint64(2), nil}}},
}

func TestReadAnyVectors(t *testing.T) {
	for _, tc := range decodeVectors {
		t.Run(tc.name, func(t *testing.T) {
			in := hx(t, tc.in)
			r := NewReader(in)
			got, err := r.ReadAny()
			if err != nil {
				t.Fatalf("ReadAny(% x): %v", in, err)
			}
			if !sameValue(got, tc.want) {
				t.Fatalf("ReadAny(% x) = %#v, want %#v", in, got, tc.want)
			}
			if r.Len() != 0 {
				t.Fatalf("%d bytes left unread", r.Len())
			}
			// Skip and RawValue must agree with ReadAny on where the value ends.
			r.Reset(append(in[:len(in):len(in)], TypeNull))
			if err := r.Skip(); err != nil || r.Len() != 1 {
				t.Fatalf("Skip: err=%v, left %d, want 1", err, r.Len())
			}
			r.Reset(in)
			raw, err := r.RawValue()
			if err != nil || len(raw) != len(in) {
				t.Fatalf("RawValue: % x, %v", raw, err)
			}
		})
	}
}

// Every proper prefix of a valid encoding is truncated and must fail, for
// ReadAny and Skip alike, without panicking.
func TestReadAnyTruncated(t *testing.T) {
	for _, tc := range decodeVectors {
		in := hx(t, tc.in)
		for n := 0; n < len(in); n++ {
			r := NewReader(in[:n])
			if v, err := r.ReadAny(); err == nil {
				t.Errorf("%s: ReadAny(% x) = %#v, want error", tc.name, in[:n], v)
			}
			r.Reset(in[:n])
			if err := r.Skip(); err == nil {
				t.Errorf("%s: Skip(% x) succeeded, want error", tc.name, in[:n])
			}
		}
	}
}

// validCodes are the constructors defined by the spec's encoding tables.
var validCodes = map[byte]bool{
	0x00: true, 0x40: true, 0x41: true, 0x42: true, 0x43: true, 0x44: true, 0x45: true,
	0x50: true, 0x51: true, 0x52: true, 0x53: true, 0x54: true, 0x55: true, 0x56: true,
	0x60: true, 0x61: true, 0x70: true, 0x71: true, 0x72: true, 0x73: true, 0x74: true,
	0x80: true, 0x81: true, 0x82: true, 0x83: true, 0x84: true, 0x94: true, 0x98: true,
	0xa0: true, 0xa1: true, 0xa3: true, 0xb0: true, 0xb1: true, 0xb3: true,
	0xc0: true, 0xc1: true, 0xd0: true, 0xd1: true, 0xe0: true, 0xf0: true,
}

func TestInvalidFormatCodes(t *testing.T) {
	for c := 0; c < 256; c++ {
		if validCodes[byte(c)] {
			continue
		}
		in := append([]byte{byte(c)}, rep(0, 32)...)
		r := NewReader(in)
		if _, err := r.ReadAny(); !errors.Is(err, ErrInvalidCode) {
			t.Errorf("ReadAny(0x%02x ...): err=%v, want ErrInvalidCode", c, err)
		}
		r.Reset(in)
		if err := r.Skip(); !errors.Is(err, ErrInvalidCode) {
			t.Errorf("Skip(0x%02x ...): err=%v, want ErrInvalidCode", c, err)
		}
		// As an array element constructor too.
		r.Reset(cat([]byte{TypeArray8, 3, 1, byte(c)}, rep(0, 32)))
		if _, err := r.ReadAny(); err == nil {
			t.Errorf("array of 0x%02x decoded, want error", c)
		}
	}
}

// nestedLists returns depth list32s nested around a null.
func nestedLists(depth int) []byte {
	v := []byte{TypeNull}
	for i := 0; i < depth; i++ {
		h := binary.BigEndian.AppendUint32([]byte{TypeList32}, uint32(len(v)+4))
		v = append(binary.BigEndian.AppendUint32(h, 1), v...)
	}
	return v
}

// nestedArrays returns depth array32s, each the single element of the
// next, around an array of one null.
func nestedArrays(depth int) []byte {
	p := hx(nil, "00 00 00 05 00 00 00 01 40") // payload: size, count, constructor
	for i := 0; i < depth; i++ {
		h := binary.BigEndian.AppendUint32(nil, uint32(len(p)+5))
		h = binary.BigEndian.AppendUint32(h, 1)
		p = append(append(h, TypeArray32), p...)
	}
	return append([]byte{TypeArray32}, p...)
}

func TestReadAnyErrors(t *testing.T) {
	deepDescribed := ""
	for i := 0; i < 100; i++ {
		deepDescribed += "00 53 01 "
	}
	deepDescribed += "40"
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"empty input", "", ErrTruncated},
		{"boolean byte 2", "56 02", ErrInvalidCode},
		{"str8 invalid utf8", "a1 02 c3 28", ErrInvalidCode},
		{"str32 invalid utf8", "b1 00 00 00 01 ff", ErrInvalidCode},
		{"str8 longer than input", "a1 05 61", ErrTruncated},
		{"vbin32 length beyond input", "b0 ff ff ff ff 00", ErrTruncated},
		{"sym32 length beyond input", "b3 80 00 00 00 61", ErrTruncated},
		{"list8 size 0", "c0 00 00", ErrBadSize},
		{"list8 count beyond size", "c0 01 05", ErrBadSize},
		{"list8 size beyond input", "c0 09 01 40", ErrBadSize},
		{"list32 size below 4", "d0 00 00 00 03 00 00 00 00", ErrBadSize},
		{"list32 count beyond size", "d0 00 00 00 05 00 00 00 02 40", ErrBadSize},
		{"list32 huge count", "d0 00 00 00 05 ff ff ff ff 40", ErrBadSize},
		{"list8 size larger than elements", "c0 05 01 40 40 40 40", ErrBadSize},
		{"list8 element runs past size", "c0 02 01 a1 03 61 62 63", ErrBadSize},
		{"map8 size 0", "c1 00 00", ErrBadSize},
		{"map8 odd count", "c1 02 01 40", ErrBadSize},
		{"map8 count beyond size", "c1 03 04 40 40", ErrBadSize},
		{"map32 size below 4", "d1 00 00 00 02 00 00 00 00", ErrBadSize},
		{"map32 huge count", "d1 00 00 00 06 ff ff ff fe 40 40", ErrBadSize},
		{"map8 size larger than entries", "c1 05 02 40 40 40 40", ErrBadSize},
		{"map key list", "c1 03 02 45 40", ErrUnexpected},
		{"map key map", "c1 05 02 c1 01 00 40", ErrUnexpected},
		{"map key array", "c1 06 02 e0 02 00 40 40", ErrUnexpected},
		{"map key described", "c1 06 02 00 53 01 40 40", ErrUnexpected},
		{"array8 size 0", "e0 00 00", ErrBadSize},
		{"array32 size below 4", "f0 00 00 00 03 00 00 00 00", ErrBadSize},
		{"array8 size beyond input", "e0 09 01 50 01", ErrTruncated},
		{"array8 count beyond input", "e0 04 09 50 01 02", ErrBadSize},
		{"array32 count beyond input", "f0 00 00 00 07 ff ff ff ff 50 01 02", ErrBadSize},
		{"array32 variable count beyond input", "f0 00 00 00 07 00 01 00 00 a1 00 00", ErrBadSize},
		{"array8 size larger than elements", "e0 05 01 50 01 02 03", ErrBadSize},
		// The fuzzer's find: size 4 leaves no room for the constructor, which
		// was read from beyond the array; a negative remainder then passed the
		// count check and a 14-byte input asked for 4 billion elements.
		{"array32 constructor beyond size", "f0 00 00 00 04 fd 30 30 f5 62 62 62 62 2e 00 30", ErrBadSize},
		{"array8 constructor beyond size", "e0 01 ff a1 00 00 00", ErrBadSize},
		{"array8 descriptor beyond size", "e0 03 02 00 a3 05 61 62 63 64 65 50 01 02", ErrBadSize},
		{"array zero-width count above cap", "f0 00 00 00 05 00 01 00 01 40", ErrBadSize},
		{"array nested described constructor", "e0 08 01 00 53 01 00 53 02 50 01", ErrInvalidCode},
		{"array descriptor null", "e0 05 01 00 40 50 01", ErrInvalidCode},
		{"array descriptor list", "e0 05 01 00 45 50 01", ErrInvalidCode},
		{"array mixed boolean byte", "e0 04 02 56 01 07", ErrInvalidCode},
		{"descriptor of type string", "00 a1 01 78 40", ErrInvalidCode},
		{"descriptor of type uint", "00 52 01 40", ErrInvalidCode},
		{"described without value", "00 53 01", ErrTruncated},
		{"too deep described", deepDescribed, ErrTooDeep},
		{"too deep lists", hex.EncodeToString(nestedLists(100)), ErrTooDeep},
		{"too deep arrays", hex.EncodeToString(nestedArrays(100)), ErrTooDeep},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(hx(t, tc.in))
			v, err := r.ReadAny()
			if !errors.Is(err, tc.want) {
				t.Fatalf("ReadAny(%s) = %#v, %v; want %v", tc.in, v, err, tc.want)
			}
		})
	}
}

// The zero-width element cap is a budget for the whole buffer, so many
// small arrays cannot multiply it.
func TestZeroWidthBudget(t *testing.T) {
	one := hx(t, "f0 00 00 00 05 00 00 80 00 40") // 32768 nulls in 10 bytes
	list := cat(hx(t, "c0 1f 03"), one, one, one)
	r := NewReader(list)
	if _, err := r.ReadAny(); !errors.Is(err, ErrBadSize) {
		t.Fatalf("three arrays of 32768 nulls: err=%v, want ErrBadSize", err)
	}
	r.Reset(cat(hx(t, "c0 15 02"), one, one))
	v, err := r.ReadAny()
	if err != nil {
		t.Fatalf("two arrays of 32768 nulls (exactly the budget): %v", err)
	}
	if n := len(v.([]any)[1].(Array).Elements); n != 32768 {
		t.Fatalf("second array has %d elements", n)
	}
	// Reset restores the budget.
	r.Reset(one)
	if _, err := r.ReadAny(); err != nil {
		t.Fatalf("after Reset: %v", err)
	}
}

// maxDepth counts levels below the top value: 33 nested lists put the
// innermost null at depth 33, one past the limit of 32.
func TestNestingLimit(t *testing.T) {
	for _, tc := range []struct {
		depth int
		ok    bool
	}{{1, true}, {16, true}, {32, true}, {33, false}, {200, false}} {
		_, err := NewReader(nestedLists(tc.depth)).ReadAny()
		if tc.ok && err != nil {
			t.Errorf("%d nested lists: %v", tc.depth, err)
		}
		if !tc.ok && !errors.Is(err, ErrTooDeep) {
			t.Errorf("%d nested lists: err=%v, want ErrTooDeep", tc.depth, err)
		}
		// Skip does not descend into lists, so depth never limits it.
		if err := NewReader(nestedLists(tc.depth)).Skip(); err != nil {
			t.Errorf("Skip of %d nested lists: %v", tc.depth, err)
		}
	}
}

func TestTypedReaders(t *testing.T) {
	t.Run("ReadUlong accepts every unsigned form", func(t *testing.T) {
		for in, want := range map[string]uint64{
			"43": 0, "44": 0, "50 07": 7, "52 07": 7, "53 07": 7, "60 01 00": 256,
			"70 00 01 00 00": 65536, "80 00 00 00 01 00 00 00 00": 1 << 32,
		} {
			got, err := NewReader(hx(t, in)).ReadUlong()
			if err != nil || got != want {
				t.Errorf("ReadUlong(%s) = %d, %v; want %d", in, got, err, want)
			}
		}
	})
	t.Run("narrow readers reject overflow", func(t *testing.T) {
		if _, err := NewReader(hx(t, "80 00 00 00 01 00 00 00 00")).ReadUint(); !errors.Is(err, ErrBadSize) {
			t.Errorf("ReadUint(2^32): %v", err)
		}
		if _, err := NewReader(hx(t, "70 00 01 00 00")).ReadUshort(); !errors.Is(err, ErrBadSize) {
			t.Errorf("ReadUshort(65536): %v", err)
		}
		if _, err := NewReader(hx(t, "60 01 00")).ReadUbyte(); !errors.Is(err, ErrBadSize) {
			t.Errorf("ReadUbyte(256): %v", err)
		}
		if v, err := NewReader(hx(t, "70 ff ff ff ff")).ReadUint(); err != nil || v != math.MaxUint32 {
			t.Errorf("ReadUint(max) = %d, %v", v, err)
		}
	})
	t.Run("ReadLong accepts every signed form", func(t *testing.T) {
		for in, want := range map[string]int64{
			"51 ff": -1, "54 ff": -1, "55 ff": -1, "61 ff fe": -2,
			"71 ff ff ff fd": -3, "81 ff ff ff ff ff ff ff fc": -4,
		} {
			got, err := NewReader(hx(t, in)).ReadLong()
			if err != nil || got != want {
				t.Errorf("ReadLong(%s) = %d, %v; want %d", in, got, err, want)
			}
		}
	})
	t.Run("wrong type is reported and not consumed", func(t *testing.T) {
		readers := map[string]func(r *Reader) error{
			"ReadBool":       func(r *Reader) error { _, err := r.ReadBool(); return err },
			"ReadUlong":      func(r *Reader) error { _, err := r.ReadUlong(); return err },
			"ReadLong":       func(r *Reader) error { _, err := r.ReadLong(); return err },
			"ReadTimestamp":  func(r *Reader) error { _, err := r.ReadTimestamp(); return err },
			"ReadBinary":     func(r *Reader) error { _, err := r.ReadBinary(); return err },
			"ReadString":     func(r *Reader) error { _, err := r.ReadString(); return err },
			"ReadListHeader": func(r *Reader) error { _, err := r.ReadListHeader(); return err },
			"ReadMapHeader":  func(r *Reader) error { _, err := r.ReadMapHeader(); return err },
			"ReadDescriptor": func(r *Reader) error { _, _, err := r.ReadDescriptor(); return err },
		}
		for name, read := range readers {
			r := NewReader(hx(t, "98 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff")) // a uuid
			if err := read(r); !errors.Is(err, ErrUnexpected) {
				t.Errorf("%s(uuid): err=%v, want ErrUnexpected", name, err)
			}
			if r.Pos() != 0 {
				t.Errorf("%s consumed %d bytes of a value it rejected", name, r.Pos())
			}
		}
	})
	t.Run("ReadString and ReadSymbol accept both string and symbol", func(t *testing.T) {
		if s, err := NewReader(hx(t, "a3 02 68 69")).ReadString(); err != nil || s != "hi" {
			t.Errorf("ReadString(sym8) = %q, %v", s, err)
		}
		if s, err := NewReader(hx(t, "b1 00 00 00 02 68 69")).ReadSymbol(); err != nil || s != "hi" {
			t.Errorf("ReadSymbol(str32) = %q, %v", s, err)
		}
		if _, err := NewReader(hx(t, "a1 01 ff")).ReadString(); !errors.Is(err, ErrInvalidCode) {
			t.Errorf("ReadString(invalid utf8): %v", err)
		}
	})
	t.Run("ReadSymbols", func(t *testing.T) {
		for in, want := range map[string][]Symbol{
			"a3 01 61":                                     {"a"},
			"e0 06 02 a3 01 61 01 62":                      {"a", "b"},
			"e0 06 02 a1 01 61 01 62":                      {"a", "b"}, // array of strings, tolerated
			"f0 00 00 00 0a 00 00 00 01 b3 00 00 00 01 61": {"a"},
			"e0 02 00 a3":                                  {},
		} {
			got, err := NewReader(hx(t, in)).ReadSymbols()
			if err != nil || len(got) != len(want) {
				t.Errorf("ReadSymbols(%s) = %q, %v; want %q", in, got, err, want)
				continue
			}
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("ReadSymbols(%s) = %q; want %q", in, got, want)
				}
			}
		}
		if _, err := NewReader(hx(t, "e0 04 02 50 01 02")).ReadSymbols(); !errors.Is(err, ErrUnexpected) {
			t.Errorf("ReadSymbols(array of ubyte): %v", err)
		}
	})
	t.Run("ReadDescriptor", func(t *testing.T) {
		code, sym, err := NewReader(hx(t, "00 53 10")).ReadDescriptor()
		if err != nil || code != 0x10 || sym != "" {
			t.Errorf("numeric: %d %q %v", code, sym, err)
		}
		code, sym, err = NewReader(hx(t, "00 80 00 00 00 00 00 00 00 10")).ReadDescriptor()
		if err != nil || code != 0x10 || sym != "" {
			t.Errorf("numeric ulong: %d %q %v", code, sym, err)
		}
		code, sym, err = NewReader(hx(t, "00 a3 0e 61 6d 71 70 3a 6f 70 65 6e 3a 6c 69 73 74")).ReadDescriptor()
		if err != nil || code != 0 || sym != "amqp:open:list" {
			t.Errorf("symbolic: %d %q %v", code, sym, err)
		}
	})
	t.Run("ReadMap", func(t *testing.T) {
		m, err := NewReader(hx(t, "40")).ReadMap()
		if err != nil || m != nil {
			t.Errorf("ReadMap(null) = %v, %v", m, err)
		}
		m, err = NewReader(hx(t, "c1 05 02 a1 01 6b 41")).ReadMap()
		if err != nil || len(m) != 1 || m["k"] != true {
			t.Errorf("ReadMap = %v, %v", m, err)
		}
		if _, err := NewReader(hx(t, "45")).ReadMap(); !errors.Is(err, ErrUnexpected) {
			t.Errorf("ReadMap(list0): %v", err)
		}
	})
	t.Run("ReadListHeaderEnd", func(t *testing.T) {
		r := NewReader(hx(t, "c0 04 02 41 50 07 40"))
		n, end, err := r.ReadListHeaderEnd()
		if err != nil || n != 2 || end != 6 {
			t.Fatalf("list8: n=%d end=%d err=%v; want 2, 6", n, end, err)
		}
		r = NewReader(hx(t, "d0 00 00 00 05 00 00 00 01 41"))
		if n, end, err = r.ReadListHeaderEnd(); err != nil || n != 1 || end != 10 {
			t.Fatalf("list32: n=%d end=%d err=%v; want 1, 10", n, end, err)
		}
		r = NewReader(hx(t, "45"))
		if n, end, err = r.ReadListHeaderEnd(); err != nil || n != 0 || end != 1 {
			t.Fatalf("list0: n=%d end=%d err=%v; want 0, 1", n, end, err)
		}
	})
	t.Run("SkipNull Peek SkipN Bytes", func(t *testing.T) {
		r := NewReader(hx(t, "40 50 01 a1 01 61 41"))
		if !r.SkipNull() || r.SkipNull() {
			t.Fatal("SkipNull")
		}
		if c, err := r.Peek(); err != nil || c != TypeUbyte {
			t.Fatalf("Peek = %x, %v", c, err)
		}
		if err := r.SkipN(2); err != nil || r.Len() != 1 || r.Bytes()[0] != TypeTrue {
			t.Fatalf("SkipN: %v, left % x", err, r.Bytes())
		}
		if err := r.SkipN(2); !errors.Is(err, ErrTruncated) {
			t.Fatalf("SkipN past end: %v", err)
		}
		if _, err := r.Peek(); !errors.Is(err, ErrTruncated) {
			t.Fatalf("Peek at end: %v", err)
		}
	})
	t.Run("ReadTimestamp", func(t *testing.T) {
		ts, err := NewReader(hx(t, "83 00 00 01 8c c8 20 db 2e")).ReadTimestamp()
		if err != nil || !ts.Equal(time.Date(2024, 1, 2, 3, 4, 5, 678e6, time.UTC)) || ts.Location() != time.UTC {
			t.Errorf("ReadTimestamp = %v, %v", ts, err)
		}
	})
	t.Run("decoded binary aliases the input", func(t *testing.T) {
		in := hx(t, "a0 02 01 02")
		b, err := NewReader(in).ReadBinary()
		if err != nil {
			t.Fatal(err)
		}
		in[2] = 9
		if b[0] != 9 {
			t.Error("ReadBinary copied; the package doc promises aliasing")
		}
	})
}

func TestUUIDText(t *testing.T) {
	u := UUID{0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00}
	const s = "123e4567-e89b-12d3-a456-426614174000"
	if u.String() != s {
		t.Errorf("String() = %s", u.String())
	}
	for in, ok := range map[string]bool{
		s:                                      true,
		"123E4567-E89B-12D3-A456-426614174000": true,
		"123e4567e89b12d3a456426614174000":     false,
		"123e4567-e89b-12d3-a456-42661417400g": false,
		"123e4567-e89b-12d3-a456_426614174000": false,
		"":                                     false,
	} {
		got, err := ParseUUID(in)
		if ok && (err != nil || got != u) {
			t.Errorf("ParseUUID(%q) = %v, %v", in, got, err)
		}
		if !ok && err == nil {
			t.Errorf("ParseUUID(%q) succeeded", in)
		}
	}
}
