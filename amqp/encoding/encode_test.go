package encoding

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

// TestSmallestForm checks the exact bytes the writer produces, at every
// boundary where a smaller form stops fitting (part 1, section 1.6).
func TestSmallestForm(t *testing.T) {
	str := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name string
		v    any
		want []byte
	}{
		{"null", nil, hx(t, "40")},
		{"true", true, hx(t, "41")},
		{"false", false, hx(t, "42")},
		{"ubyte", uint8(7), hx(t, "50 07")},
		{"ushort", uint16(0x1234), hx(t, "60 12 34")},
		{"uint 0 is uint0", uint32(0), hx(t, "43")},
		{"uint 1 is smalluint", uint32(1), hx(t, "52 01")},
		{"uint 255 is smalluint", uint32(255), hx(t, "52 ff")},
		{"uint 256 is uint", uint32(256), hx(t, "70 00 00 01 00")},
		{"uint max", uint32(math.MaxUint32), hx(t, "70 ff ff ff ff")},
		{"ulong 0 is ulong0", uint64(0), hx(t, "44")},
		{"ulong 255 is smallulong", uint64(255), hx(t, "53 ff")},
		{"ulong 256 is ulong", uint64(256), hx(t, "80 00 00 00 00 00 00 01 00")},
		{"Go uint is ulong", uint(3), hx(t, "53 03")},
		{"byte", int8(-2), hx(t, "51 fe")},
		{"short", int16(-2), hx(t, "61 ff fe")},
		{"int 0 is smallint", int32(0), hx(t, "54 00")},
		{"int -128 is smallint", int32(-128), hx(t, "54 80")},
		{"int 127 is smallint", int32(127), hx(t, "54 7f")},
		{"int 128 is int", int32(128), hx(t, "71 00 00 00 80")},
		{"int -129 is int", int32(-129), hx(t, "71 ff ff ff 7f")},
		{"long -128 is smalllong", int64(-128), hx(t, "55 80")},
		{"long 127 is smalllong", int64(127), hx(t, "55 7f")},
		{"long 128 is long", int64(128), hx(t, "81 00 00 00 00 00 00 00 80")},
		{"long -129 is long", int64(-129), hx(t, "81 ff ff ff ff ff ff ff 7f")},
		{"Go int is long", int(-1), hx(t, "55 ff")},
		{"float", float32(1.5), hx(t, "72 3f c0 00 00")},
		{"double", math.Pi, hx(t, "82 40 09 21 fb 54 44 2d 18")},
		{"decimal32", Decimal32{1, 2, 3, 4}, hx(t, "74 01 02 03 04")},
		{"decimal64", Decimal64{1, 2, 3, 4, 5, 6, 7, 8}, hx(t, "84 01 02 03 04 05 06 07 08")},
		{"decimal128", Decimal128{15: 1}, hx(t, "94 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01")},
		{"char", Char(0x1f600), hx(t, "73 00 01 f6 00")},
		{"timestamp", time.Date(2024, 1, 2, 3, 4, 5, 678e6, time.UTC), hx(t, "83 00 00 01 8c c8 20 db 2e")},
		{"timestamp truncates to ms", time.Date(2024, 1, 2, 3, 4, 5, 678999999, time.UTC), hx(t, "83 00 00 01 8c c8 20 db 2e")},
		{"timestamp in another zone", time.Date(2024, 1, 2, 4, 4, 5, 678e6, time.FixedZone("CET", 3600)), hx(t, "83 00 00 01 8c c8 20 db 2e")},
		{"timestamp before epoch", time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC), hx(t, "83 ff ff fd fd ae 01 dc 00")},
		{"uuid", UUID{15: 0xff}, hx(t, "98 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ff")},
		{"binary empty", []byte{}, hx(t, "a0 00")},
		{"binary 255 is vbin8", bytes.Repeat([]byte{7}, 255), cat(hx(t, "a0 ff"), rep(7, 255))},
		{"binary 256 is vbin32", bytes.Repeat([]byte{7}, 256), cat(hx(t, "b0 00 00 01 00"), rep(7, 256))},
		{"BinaryKey is binary", BinaryKey("\x01"), hx(t, "a0 01 01")},
		{"string", "hi", hx(t, "a1 02 68 69")},
		{"string 255 is str8", str(255), cat(hx(t, "a1 ff"), rep('x', 255))},
		{"string 256 is str32", str(256), cat(hx(t, "b1 00 00 01 00"), rep('x', 256))},
		{"symbol", Symbol("hi"), hx(t, "a3 02 68 69")},
		{"symbol 256 is sym32", Symbol(str(256)), cat(hx(t, "b3 00 00 01 00"), rep('x', 256))},
		{"empty list is list0", []any{}, hx(t, "45")},
		{"list8", []any{true, nil}, hx(t, "c0 03 02 41 40")},
		{"nested list", []any{[]any{}, []any{uint8(1)}}, hx(t, "c0 07 02 45 c0 03 01 50 01")},
		// list8 holds up to 254 bytes of elements (size includes the count byte)
		{"list with 254-byte body is list8", []any{str(252)}, cat(hx(t, "c0 ff 01 a1 fc"), rep('x', 252))},
		{"list with 255-byte body is list32", []any{str(253)}, cat(hx(t, "d0 00 00 01 03 00 00 00 01 a1 fd"), rep('x', 253))},
		{"list of 254 nulls is list8", make([]any, 254), cat(hx(t, "c0 ff fe"), rep(0x40, 254))},
		{"list of 256 nulls is list32", make([]any, 256), cat(hx(t, "d0 00 00 01 04 00 00 01 00"), rep(0x40, 256))},
		{"empty map is map8", map[any]any{}, hx(t, "c1 01 00")},
		{"map8", map[string]any{"a": true}, hx(t, "c1 05 02 a1 01 61 41")},
		{"map with symbol keys", map[Symbol]any{"a": uint32(1)}, hx(t, "c1 06 02 a3 01 61 52 01")},
		{"map32", map[any]any{"k": str(300)}, cat(hx(t, "d1 00 00 01 38 00 00 00 02 a1 01 6b b1 00 00 01 2c"), rep('x', 300))},
		{"described numeric", &Described{uint64(0x24), []any{}}, hx(t, "00 53 24 45")},
		{"described by value", Described{uint64(0x24), []any{}}, hx(t, "00 53 24 45")},
		{"described symbolic", &Described{Symbol("apache.org:selector-filter:string"), "x"},
			hx(t, "00 a3 21 61 70 61 63 68 65 2e 6f 72 67 3a 73 65 6c 65 63 74 6f 72 2d 66 69 6c 74 65 72 3a 73 74 72 69 6e 67 a1 01 78")},
		{"symbols are an array of sym8", []Symbol{"a", "bc"}, hx(t, "e0 07 02 a3 01 61 02 62 63")},
		{"one symbol is an array too", []Symbol{"a"}, hx(t, "e0 04 01 a3 01 61")},
		{"no symbols is null", []Symbol{}, hx(t, "40")},
		{"[]string is an array of str8", []string{"hi", "!"}, hx(t, "e0 07 02 a1 02 68 69 01 21")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AppendAny([]byte{0xee}, tc.v) // appends, keeping the prefix
			if err != nil {
				t.Fatal(err)
			}
			if got[0] != 0xee || !bytes.Equal(got[1:], tc.want) {
				t.Fatalf("AppendAny(%T)\n got % x\nwant ee % x", tc.v, got, tc.want)
			}
		})
	}
}

func TestSymbolsForm(t *testing.T) {
	long := Symbol(strings.Repeat("s", 256))
	// One symbol longer than 255 bytes forces sym32 for every element.
	got := AppendSymbols(nil, []Symbol{"a", long})
	want := cat(hx(t, "f0 00 00 01 0e 00 00 00 02 b3 00 00 00 01 61 00 00 01 00"), []byte(long))
	if !bytes.Equal(got, want) {
		t.Fatalf("long symbol:\n got % x\nwant % x", got[:24], want[:24])
	}
	// Many short symbols whose total exceeds array8 go to array32 with sym32.
	many := make([]Symbol, 100)
	for i := range many {
		many[i] = "abc"
	}
	got = AppendSymbols(nil, many)
	if got[0] != TypeArray32 || got[9] != TypeSym32 {
		t.Fatalf("100 symbols: header % x", got[:10])
	}
	syms, err := NewReader(got).ReadSymbols()
	if err != nil || len(syms) != 100 || syms[99] != "abc" {
		t.Fatalf("ReadSymbols: %d, %v", len(syms), err)
	}
}

func TestArrayForm(t *testing.T) {
	u := UUID{1}
	tests := []struct {
		name string
		a    Array
		want string
	}{
		{"empty", Array{Elements: []any{}}, "e0 02 00 40"},
		{"nulls", Array{Elements: []any{nil, nil}}, "e0 02 02 40"},
		{"booleans use 0x56", Array{Elements: []any{true, false}}, "e0 04 02 56 01 00"},
		{"small uints are smalluint", Array{Elements: []any{uint32(0), uint32(255)}}, "e0 04 02 52 00 ff"},
		{"one large uint widens all", Array{Elements: []any{uint32(1), uint32(256)}}, "e0 0a 02 70 00 00 00 01 00 00 01 00"},
		{"zero ulongs are smallulong", Array{Elements: []any{uint64(0)}}, "e0 03 01 53 00"},
		{"ulong", Array{Elements: []any{uint64(1), uint64(1 << 40)}}, "e0 12 02 80 00 00 00 00 00 00 00 01 00 00 01 00 00 00 00 00"},
		{"smallint", Array{Elements: []any{int32(-1), int32(1)}}, "e0 04 02 54 ff 01"},
		{"int sign-extends", Array{Elements: []any{int32(-1), int32(1000)}}, "e0 0a 02 71 ff ff ff ff 00 00 03 e8"},
		{"smalllong", Array{Elements: []any{int64(-128)}}, "e0 03 01 55 80"},
		{"long sign-extends", Array{Elements: []any{int64(-2), int64(200)}}, "e0 12 02 81 ff ff ff ff ff ff ff fe 00 00 00 00 00 00 00 c8"},
		{"ubyte", Array{Elements: []any{uint8(1), uint8(2)}}, "e0 04 02 50 01 02"},
		{"ushort", Array{Elements: []any{uint16(1)}}, "e0 04 01 60 00 01"},
		{"byte", Array{Elements: []any{int8(-1)}}, "e0 03 01 51 ff"},
		{"short", Array{Elements: []any{int16(-1)}}, "e0 04 01 61 ff ff"},
		{"float", Array{Elements: []any{float32(1.5)}}, "e0 06 01 72 3f c0 00 00"},
		{"double", Array{Elements: []any{1.5}}, "e0 0a 01 82 3f f8 00 00 00 00 00 00"},
		{"char", Array{Elements: []any{Char('a')}}, "e0 06 01 73 00 00 00 61"},
		{"timestamp", Array{Elements: []any{time.UnixMilli(1000)}}, "e0 0a 01 83 00 00 00 00 00 00 03 e8"},
		{"uuid", Array{Elements: []any{u}}, "e0 12 01 98 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"},
		{"decimal32", Array{Elements: []any{Decimal32{1, 2, 3, 4}}}, "e0 06 01 74 01 02 03 04"},
		{"binary", Array{Elements: []any{[]byte{1}, []byte{}}}, "e0 05 02 a0 01 01 00"},
		{"strings", Array{Elements: []any{"a", "bc"}}, "e0 07 02 a1 01 61 02 62 63"},
		{"symbols", Array{Elements: []any{Symbol("a")}}, "e0 04 01 a3 01 61"},
		{"lists: list0 becomes list8", Array{Elements: []any{[]any{}, []any{true}}}, "e0 07 02 c0 01 00 02 01 41"},
		{"maps", Array{Elements: []any{map[any]any{}, map[any]any{"a": nil}}}, "e0 0a 02 c1 01 00 05 02 a1 01 61 40"},
		{"arrays", Array{Elements: []any{Array{Elements: []any{uint8(1)}}}}, "e0 06 01 e0 03 01 50 01"},
		{"described symbolic, bare elements", Array{Descriptor: Symbol("x"), Elements: []any{uint8(1), uint8(2)}},
			"e0 08 02 00 a3 01 78 50 01 02"},
		{"described numeric, *Described elements", Array{Descriptor: uint64(0x24),
			Elements: []any{&Described{uint64(0x24), []any{}}, &Described{uint64(0x24), []any{}}}},
			"e0 09 02 00 53 24 c0 01 00 01 00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AppendArray(nil, tc.a)
			if err != nil {
				t.Fatal(err)
			}
			if want := hx(t, tc.want); !bytes.Equal(got, want) {
				t.Fatalf("\n got % x\nwant % x", got, want)
			}
			back, err := NewReader(got).ReadAny()
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := tc.a
			if want.Descriptor != nil { // the decoder wraps every element
				els := make([]any, len(want.Elements))
				for i, e := range want.Elements {
					if _, ok := e.(*Described); !ok {
						e = &Described{want.Descriptor, e}
					}
					els[i] = e
				}
				want.Elements = els
			}
			for i, e := range want.Elements { // times come back in UTC
				if ts, ok := e.(time.Time); ok {
					want.Elements[i] = ts.UTC()
				}
			}
			if !sameValue(back, want) {
				t.Fatalf("decoded %#v, want %#v", back, want)
			}
		})
	}
}

func TestArrayLargeForms(t *testing.T) {
	// 256 elements: the count no longer fits array8.
	els := make([]any, 256)
	for i := range els {
		els[i] = uint8(i)
	}
	got, err := AppendArray(nil, Array{Elements: els})
	if err != nil {
		t.Fatal(err)
	}
	if want := hx(t, "f0 00 00 01 05 00 00 01 00 50"); !bytes.Equal(got[:10], want) {
		t.Fatalf("256 ubytes: header % x, want % x", got[:10], want)
	}
	// A body of 254 bytes fits array8 (size = count + body = 255) and one more does not.
	for _, n := range []int{252, 253} { // one str8 element: ctor 1 + length 1 + n bytes
		got, err := AppendArray(nil, Array{Elements: []any{strings.Repeat("y", n)}})
		if err != nil {
			t.Fatal(err)
		}
		wantCode := TypeArray8
		if n == 253 {
			wantCode = TypeArray32
		}
		if got[0] != wantCode {
			t.Errorf("string of %d: code 0x%02x, want 0x%02x", n, got[0], wantCode)
		}
		v, err := NewReader(got).ReadAny()
		if err != nil || len(v.(Array).Elements[0].(string)) != n {
			t.Errorf("string of %d: decode %v", n, err)
		}
	}
	// Elements that need str32 make every element str32.
	got, err = AppendArray(nil, Array{Elements: []any{"a", strings.Repeat("z", 300)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := hx(t, "f0 00 00 01 3a 00 00 00 02 b1 00 00 00 01 61 00 00 01 2c"); !bytes.Equal(got[:19], want) {
		t.Fatalf("str32 array header\n got % x\nwant % x", got[:19], want)
	}
	// Nested array8 elements widen to array32 when one of them needs it.
	inner := Array{Elements: make([]any, 300)}
	got, err = AppendArray(nil, Array{Elements: []any{Array{Elements: []any{nil}}, inner}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewReader(got).ReadAny()
	if err != nil {
		t.Fatal(err)
	}
	if a := v.(Array); len(a.Elements) != 2 || len(a.Elements[1].(Array).Elements) != 300 || got[0] != TypeArray8 || got[3] != TypeArray32 {
		t.Fatalf("nested widening: % x", got[:4])
	}
}

func TestAppendErrors(t *testing.T) {
	for name, v := range map[string]any{
		"struct":                       struct{}{},
		"channel":                      make(chan int),
		"list holding a func":          []any{func() {}},
		"map value unsupported":        map[any]any{"k": struct{}{}},
		"map key unsupported":          map[any]any{struct{}{}: 1},
		"described value unsupported":  &Described{uint64(1), struct{}{}},
		"mixed array":                  Array{Elements: []any{uint8(1), "x"}},
		"uint and ulong mixed":         Array{Elements: []any{uint32(1), uint64(1)}},
		"string and symbol mixed":      Array{Elements: []any{"a", Symbol("b")}},
		"null and value mixed":         Array{Elements: []any{nil, uint8(1)}},
		"described without Descriptor": Array{Elements: []any{&Described{uint64(1), uint8(1)}}},
		"array element unsupported":    Array{Elements: []any{struct{}{}}},
		"array descriptor unsupported": Array{Descriptor: struct{}{}, Elements: []any{uint8(1)}},
	} {
		if b, err := AppendAny(nil, v); err == nil {
			t.Errorf("%s: AppendAny succeeded with % x", name, b)
		}
	}
}

// Values survive encode then decode with their AMQP type intact.
func TestRoundTrip(t *testing.T) {
	ts := time.Date(2030, 5, 6, 7, 8, 9, 10e6, time.UTC)
	values := []any{
		nil, true, false,
		uint8(0), uint8(255), uint16(0), uint16(65535),
		uint32(0), uint32(1), uint32(255), uint32(256), uint32(math.MaxUint32),
		uint64(0), uint64(255), uint64(256), uint64(math.MaxUint64),
		int8(math.MinInt8), int8(math.MaxInt8), int16(math.MinInt16), int16(math.MaxInt16),
		int32(math.MinInt32), int32(-129), int32(-128), int32(127), int32(128), int32(math.MaxInt32),
		int64(math.MinInt64), int64(-129), int64(-128), int64(127), int64(128), int64(math.MaxInt64),
		float32(0), float32(math.Inf(-1)), float32(math.NaN()), float32(math.SmallestNonzeroFloat32),
		0.0, math.Inf(1), math.NaN(), math.MaxFloat64,
		Decimal32{1}, Decimal64{2}, Decimal128{3},
		Char(0), Char('é'), Char(0x10ffff),
		ts, time.UnixMilli(math.MinInt64 / 2).UTC(), time.UnixMilli(-1).UTC(),
		UUID{1, 2, 3}, []byte{}, []byte{0, 1, 2}, bytes.Repeat([]byte{9}, 70000),
		"", "héllo wörld", strings.Repeat("s", 70000), Symbol(""), Symbol("amqp:accepted:list"),
		[]any{}, []any{nil, uint32(1), "x", []any{[]any{}}, map[any]any{}},
		map[any]any{
			nil: "null key", true: 1.5, uint8(1): "ubyte", uint16(1): "ushort", uint32(1): "uint",
			uint64(1): "ulong", int8(1): "byte", int16(1): "short", int32(1): "int", int64(1): "long",
			float32(1): "float", 1.0: "double", Char('c'): "char", ts: "timestamp", UUID{9}: "uuid",
			BinaryKey("\x00\xff"): "binary", "string": []any{}, Symbol("symbol"): map[any]any{"n": nil},
			Decimal64{1}: "decimal",
		},
		map[any]any{math.NaN(): uint8(1)},
		Array{Elements: []any{}},
		Array{Elements: []any{Symbol("a"), Symbol("b")}},
		Array{Elements: []any{Array{Elements: []any{true}}, Array{Elements: []any{false, true}}}},
		Array{Descriptor: Symbol("com.example:thing"), Elements: []any{&Described{Symbol("com.example:thing"), "a"}}},
		&Described{uint64(0x0000013700000000), map[any]any{Symbol("x-opt"): int64(-5)}},
		&Described{Symbol("apache.org:selector-filter:string"), "amqp.annotation.x-opt-sequence-number > 10"},
	}
	for _, v := range values {
		enc := mustAppend(t, v)
		r := NewReader(enc)
		got, err := r.ReadAny()
		if err != nil {
			t.Errorf("%T %v: decode % x: %v", v, v, enc[:min(len(enc), 32)], err)
			continue
		}
		if r.Len() != 0 {
			t.Errorf("%T: %d bytes left", v, r.Len())
		}
		if !sameValue(got, v) {
			t.Errorf("round trip of %T\n got %#v\nwant %#v", v, got, v)
		}
		// Encoding is deterministic (map order included), so re-encoding the
		// decoded value gives the same bytes.
		if again := mustAppend(t, got); !bytes.Equal(again, enc) {
			t.Errorf("%T: re-encoding differs\n got % x\nwant % x", v, again, enc)
		}
	}
}

// Maps with several NaN keys are legal Go maps; every entry must survive.
func TestMapNaNKeys(t *testing.T) {
	m := map[any]any{math.NaN(): "a", math.NaN(): "b", 1.0: "c"}
	enc := mustAppend(t, m)
	got, err := NewReader(enc).ReadAny()
	if err != nil {
		t.Fatal(err)
	}
	vals := map[any]int{}
	for _, v := range got.(map[any]any) {
		vals[v]++
	}
	if len(got.(map[any]any)) != 3 || vals["a"] != 1 || vals["b"] != 1 || vals["c"] != 1 {
		t.Fatalf("decoded %v", got)
	}
	if !bytes.Equal(mustAppend(t, got), enc) {
		t.Fatal("encoding of a map with NaN keys is not deterministic")
	}
}

// Map encoding is ordered by encoded key, so it does not depend on Go's
// randomised map iteration.
func TestMapDeterministic(t *testing.T) {
	m := map[any]any{}
	for i := 0; i < 50; i++ {
		m[uint32(i)] = i
		m[strings.Repeat("k", i)] = nil
	}
	first := mustAppend(t, m)
	for i := 0; i < 20; i++ {
		if !bytes.Equal(mustAppend(t, m), first) {
			t.Fatal("map encoding varies between calls")
		}
	}
}

func TestListBuilder(t *testing.T) {
	b, mark := BeginList([]byte{0xaa})
	b = AppendUint(b, 1)
	b = AppendNull(b)
	b = EndList(b, mark, 2)
	if want := hx(t, "aa c0 04 02 52 01 40"); !bytes.Equal(b, want) {
		t.Fatalf("got % x want % x", b, want)
	}
	b, mark = BeginList(nil)
	b = EndList(b, mark, 0)
	if !bytes.Equal(b, hx(t, "45")) {
		t.Fatalf("empty list: % x", b)
	}
	b, mark = BeginMap(nil)
	b = EndMap(b, mark, 0)
	if !bytes.Equal(b, hx(t, "c1 01 00")) {
		t.Fatalf("empty map: % x", b)
	}
	b, mark = BeginMap(nil)
	b = AppendBinary(AppendSymbol(b, "k"), make([]byte, 300))
	b = EndMap(b, mark, 2)
	if !bytes.Equal(b[:9], hx(t, "d1 00 00 01 38 00 00 00 02")) {
		t.Fatalf("map32 header % x", b[:9])
	}
	if d := AppendDescriptor(nil, 0x1234); !bytes.Equal(d, hx(t, "00 80 00 00 00 00 00 00 12 34")) {
		t.Fatalf("descriptor % x", d)
	}
}

type selfEncoder struct{}

func (selfEncoder) AppendAMQP(b []byte) ([]byte, error) { return append(b, TypeTrue), nil }

func TestAppendMarshaler(t *testing.T) {
	got := mustAppend(t, []any{selfEncoder{}})
	if !bytes.Equal(got, hx(t, "c0 02 01 41")) {
		t.Fatalf("% x", got)
	}
}
