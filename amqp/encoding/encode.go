package encoding

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"time"
)

// The Append functions add one encoded value to b and return the extended
// slice, choosing the smallest valid encoding. They never fail; AppendAny
// reports unsupported Go types.

// AppendNull appends null.
func AppendNull(b []byte) []byte { return append(b, TypeNull) }

// AppendBool appends a boolean in its one-byte form.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, TypeTrue)
	}
	return append(b, TypeFalse)
}

// AppendUbyte appends a ubyte.
func AppendUbyte(b []byte, v uint8) []byte { return append(b, TypeUbyte, v) }

// AppendUshort appends a ushort.
func AppendUshort(b []byte, v uint16) []byte {
	return binary.BigEndian.AppendUint16(append(b, TypeUshort), v)
}

// AppendUint appends a uint as uint0, smalluint or uint.
func AppendUint(b []byte, v uint32) []byte {
	switch {
	case v == 0:
		return append(b, TypeUint0)
	case v < 256:
		return append(b, TypeSmallUint, byte(v))
	}
	return binary.BigEndian.AppendUint32(append(b, TypeUint), v)
}

// AppendUlong appends a ulong as ulong0, smallulong or ulong.
func AppendUlong(b []byte, v uint64) []byte {
	switch {
	case v == 0:
		return append(b, TypeUlong0)
	case v < 256:
		return append(b, TypeSmallUlong, byte(v))
	}
	return binary.BigEndian.AppendUint64(append(b, TypeUlong), v)
}

// AppendByte appends a byte (signed 8-bit).
func AppendByte(b []byte, v int8) []byte { return append(b, TypeByte, byte(v)) }

// AppendShort appends a short.
func AppendShort(b []byte, v int16) []byte {
	return binary.BigEndian.AppendUint16(append(b, TypeShort), uint16(v))
}

// AppendInt appends an int as smallint or int.
func AppendInt(b []byte, v int32) []byte {
	if v >= -128 && v <= 127 {
		return append(b, TypeSmallInt, byte(int8(v)))
	}
	return binary.BigEndian.AppendUint32(append(b, TypeInt), uint32(v))
}

// AppendLong appends a long as smalllong or long.
func AppendLong(b []byte, v int64) []byte {
	if v >= -128 && v <= 127 {
		return append(b, TypeSmallLong, byte(int8(v)))
	}
	return binary.BigEndian.AppendUint64(append(b, TypeLong), uint64(v))
}

// AppendFloat appends a float.
func AppendFloat(b []byte, v float32) []byte {
	return binary.BigEndian.AppendUint32(append(b, TypeFloat), math.Float32bits(v))
}

// AppendDouble appends a double.
func AppendDouble(b []byte, v float64) []byte {
	return binary.BigEndian.AppendUint64(append(b, TypeDouble), math.Float64bits(v))
}

// AppendChar appends a char.
func AppendChar(b []byte, v Char) []byte {
	return binary.BigEndian.AppendUint32(append(b, TypeChar), uint32(v))
}

// AppendTimestamp appends a timestamp with millisecond precision.
func AppendTimestamp(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(append(b, TypeTimestamp), uint64(t.UnixMilli()))
}

// AppendUUID appends a uuid.
func AppendUUID(b []byte, u UUID) []byte { return append(append(b, TypeUUID), u[:]...) }

// AppendBinary appends a binary as vbin8 or vbin32.
func AppendBinary(b []byte, v []byte) []byte {
	if len(v) < 256 {
		return append(append(b, TypeVbin8, byte(len(v))), v...)
	}
	b = binary.BigEndian.AppendUint32(append(b, TypeVbin32), uint32(len(v)))
	return append(b, v...)
}

// AppendString appends a string as str8 or str32.
func AppendString(b []byte, s string) []byte {
	if len(s) < 256 {
		return append(append(b, TypeStr8, byte(len(s))), s...)
	}
	b = binary.BigEndian.AppendUint32(append(b, TypeStr32), uint32(len(s)))
	return append(b, s...)
}

// AppendSymbol appends a symbol as sym8 or sym32.
func AppendSymbol(b []byte, s Symbol) []byte {
	if len(s) < 256 {
		return append(append(b, TypeSym8, byte(len(s))), s...)
	}
	b = binary.BigEndian.AppendUint32(append(b, TypeSym32), uint32(len(s)))
	return append(b, s...)
}

// AppendSymbols appends a multiple-symbol field: null when empty, otherwise an
// array of symbols (an array even for one element, which every peer accepts).
func AppendSymbols(b []byte, syms []Symbol) []byte {
	if len(syms) == 0 {
		return AppendNull(b)
	}
	small := len(syms) < 256
	for _, s := range syms {
		if len(s) > 255 {
			small = false
		}
	}
	start := len(b)
	if small {
		b = append(b, TypeArray8, 0, byte(len(syms)), TypeSym8)
		for _, s := range syms {
			b = append(append(b, byte(len(s))), s...)
		}
		if size := len(b) - start - 2; size < 256 {
			b[start+1] = byte(size)
			return b
		}
		b = b[:start]
	}
	b = append(b, TypeArray32, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(syms)))
	b = append(b, TypeSym32)
	for _, s := range syms {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-5))
	return b
}

// AppendDescriptor appends the constructor of a described value with a
// numeric descriptor; the value follows.
func AppendDescriptor(b []byte, code uint64) []byte {
	return AppendUlong(append(b, TypeDescribed), code)
}

// BeginList starts a composite list; append its elements, then call EndList
// with the returned mark and the element count. Writing the header last lets
// the encoder pick list8 when the content is small, without a sizing pass.
func BeginList(b []byte) (out []byte, mark int) {
	mark = len(b)
	return append(b, TypeList32, 0, 0, 0, 0, 0, 0, 0, 0), mark
}

// EndList finishes a list begun at mark holding count elements.
func EndList(b []byte, mark, count int) []byte {
	return endComposite(b, mark, count, TypeList0, TypeList8, TypeList32)
}

// BeginMap starts a map; EndMap takes the number of entries (keys + values).
func BeginMap(b []byte) (out []byte, mark int) {
	mark = len(b)
	return append(b, TypeMap32, 0, 0, 0, 0, 0, 0, 0, 0), mark
}

// EndMap finishes a map begun at mark holding count keys plus values.
func EndMap(b []byte, mark, count int) []byte {
	return endComposite(b, mark, count, 0, TypeMap8, TypeMap32)
}

func endComposite(b []byte, mark, count int, code0, code8, code32 byte) []byte {
	body := len(b) - mark - 9
	switch {
	case count == 0 && code0 != 0:
		b[mark] = code0
		return b[:mark+1]
	case body+1 < 256 && count < 256:
		b[mark], b[mark+1], b[mark+2] = code8, byte(body+1), byte(count)
		copy(b[mark+3:], b[mark+9:])
		return b[:len(b)-6]
	}
	b[mark] = code32
	binary.BigEndian.PutUint32(b[mark+1:], uint32(body+4))
	binary.BigEndian.PutUint32(b[mark+5:], uint32(count))
	return b
}

// AppendAny appends a generic value (see the package doc for the mapping).
// Go ints become long and uints ulong; []string and []Symbol become arrays.
func AppendAny(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return AppendNull(b), nil
	case bool:
		return AppendBool(b, v), nil
	case uint8:
		return AppendUbyte(b, v), nil
	case uint16:
		return AppendUshort(b, v), nil
	case uint32:
		return AppendUint(b, v), nil
	case uint64:
		return AppendUlong(b, v), nil
	case uint:
		return AppendUlong(b, uint64(v)), nil
	case int8:
		return AppendByte(b, v), nil
	case int16:
		return AppendShort(b, v), nil
	case int32:
		return AppendInt(b, v), nil
	case int64:
		return AppendLong(b, v), nil
	case int:
		return AppendLong(b, int64(v)), nil
	case float32:
		return AppendFloat(b, v), nil
	case float64:
		return AppendDouble(b, v), nil
	case Decimal32:
		return append(append(b, TypeDecimal32), v[:]...), nil
	case Decimal64:
		return append(append(b, TypeDecimal64), v[:]...), nil
	case Decimal128:
		return append(append(b, TypeDecimal128), v[:]...), nil
	case Char:
		return AppendChar(b, v), nil
	case time.Time:
		return AppendTimestamp(b, v), nil
	case UUID:
		return AppendUUID(b, v), nil
	case []byte:
		return AppendBinary(b, v), nil
	case BinaryKey:
		return AppendBinary(b, []byte(v)), nil
	case string:
		return AppendString(b, v), nil
	case Symbol:
		return AppendSymbol(b, v), nil
	case []Symbol:
		return AppendSymbols(b, v), nil
	case []string:
		elems := make([]any, len(v))
		for i, s := range v {
			elems[i] = s
		}
		return AppendArray(b, Array{Elements: elems})
	case []any:
		b, mark := BeginList(b)
		var err error
		for _, e := range v {
			if b, err = AppendAny(b, e); err != nil {
				return nil, err
			}
		}
		return EndList(b, mark, len(v)), nil
	case map[any]any:
		return appendMap(b, v)
	case map[string]any:
		m := make(map[any]any, len(v))
		for k, e := range v {
			m[k] = e
		}
		return appendMap(b, m)
	case map[Symbol]any:
		m := make(map[any]any, len(v))
		for k, e := range v {
			m[k] = e
		}
		return appendMap(b, m)
	case Array:
		return AppendArray(b, v)
	case *Described:
		var err error
		b = append(b, TypeDescribed)
		if b, err = AppendAny(b, v.Descriptor); err != nil {
			return nil, err
		}
		return AppendAny(b, v.Value)
	case Described:
		return AppendAny(b, &v)
	case Marshaler:
		return v.AppendAMQP(b)
	}
	return nil, fmt.Errorf("encoding: cannot encode Go type %T", v)
}

// Marshaler is implemented by types that encode themselves (spec types).
type Marshaler interface {
	AppendAMQP(b []byte) ([]byte, error)
}

// appendMap writes entries in a stable order so encodings are reproducible
// (tests and fuzzers compare bytes); AMQP gives map order no meaning. The
// order is that of the encoded keys (then values, for keys such as NaN that
// encode alike but are distinct map entries).
func appendMap(b []byte, m map[any]any) ([]byte, error) {
	type entry struct{ k, v, end int } // offsets into scratch: key at k, value at v, end
	entries := make([]entry, 0, len(m))
	var scratch []byte
	var err error
	for k, v := range m {
		e := entry{k: len(scratch)}
		if scratch, err = AppendAny(scratch, k); err != nil {
			return nil, err
		}
		e.v = len(scratch)
		if scratch, err = AppendAny(scratch, v); err != nil {
			return nil, err
		}
		e.end = len(scratch)
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool {
		a, c := entries[i], entries[j]
		if d := bytes.Compare(scratch[a.k:a.v], scratch[c.k:c.v]); d != 0 {
			return d < 0
		}
		return bytes.Compare(scratch[a.v:a.end], scratch[c.v:c.end]) < 0
	})
	b, mark := BeginMap(b)
	for _, e := range entries {
		b = append(b, scratch[e.k:e.end]...)
	}
	return EndMap(b, mark, 2*len(entries)), nil
}

// AppendArray appends an array. All elements must be of one AMQP type, since
// they share one constructor; with a Descriptor, elements may be given bare
// or as *Described (whose own descriptor is then ignored). The writer picks
// array8 when it fits and the narrowest element constructor that holds every
// element (e.g. smalluint when all values are below 256, str8 when all
// strings are shorter than 256 bytes). Zero-width constructors (uint0, true,
// list0, ...) are not used for elements, except null for an array of nulls.
// An empty array gets the null constructor.
func AppendArray(b []byte, a Array) ([]byte, error) {
	// Encode each element in its own smallest form, then widen all of them
	// to the widest constructor met.
	var scratch []byte
	offs := make([]int, len(a.Elements)+1)
	ctor := TypeNull
	for i, e := range a.Elements {
		if d, ok := e.(*Described); ok && a.Descriptor != nil {
			e = d.Value
		}
		offs[i] = len(scratch)
		var err error
		if scratch, err = AppendAny(scratch, e); err != nil {
			return nil, err
		}
		code := scratch[offs[i]]
		fam, rank := arrayForm(code)
		if fam == TypeDescribed {
			return nil, fmt.Errorf("encoding: array element %T is described but the array has no Descriptor", e)
		}
		if i == 0 {
			ctor = elemCtor(code)
			continue
		}
		cf, cr := arrayForm(ctor)
		if cf != fam {
			return nil, fmt.Errorf("encoding: mixed array elements 0x%02x and 0x%02x", ctor, code)
		}
		if rank > cr {
			ctor = elemCtor(code)
		}
	}
	offs[len(a.Elements)] = len(scratch)

	b, mark := BeginList(b) // same 9-byte placeholder as a list32 header
	if a.Descriptor != nil {
		var err error
		if b, err = AppendAny(append(b, TypeDescribed), a.Descriptor); err != nil {
			return nil, err
		}
	}
	b = append(b, ctor)
	for i := range a.Elements {
		b = widenElem(b, ctor, scratch[offs[i]:offs[i+1]])
	}
	return endComposite(b, mark, len(a.Elements), 0, TypeArray8, TypeArray32), nil
}

// arrayForm groups format codes into families whose members can share one
// array constructor; rank orders the members from narrow to wide.
func arrayForm(code byte) (family byte, rank int) {
	switch code {
	case TypeTrue, TypeFalse, TypeBoolean:
		return TypeBoolean, 0
	case TypeUint0:
		return TypeUint, 0
	case TypeSmallUint:
		return TypeUint, 1
	case TypeUint:
		return TypeUint, 2
	case TypeUlong0:
		return TypeUlong, 0
	case TypeSmallUlong:
		return TypeUlong, 1
	case TypeUlong:
		return TypeUlong, 2
	case TypeSmallInt:
		return TypeInt, 1
	case TypeInt:
		return TypeInt, 2
	case TypeSmallLong:
		return TypeLong, 1
	case TypeLong:
		return TypeLong, 2
	case TypeVbin8:
		return TypeVbin32, 1
	case TypeVbin32:
		return TypeVbin32, 2
	case TypeStr8:
		return TypeStr32, 1
	case TypeStr32:
		return TypeStr32, 2
	case TypeSym8:
		return TypeSym32, 1
	case TypeSym32:
		return TypeSym32, 2
	case TypeList0:
		return TypeList32, 0
	case TypeList8:
		return TypeList32, 1
	case TypeList32:
		return TypeList32, 2
	case TypeMap8:
		return TypeMap32, 1
	case TypeMap32:
		return TypeMap32, 2
	case TypeArray8:
		return TypeArray32, 1
	case TypeArray32:
		return TypeArray32, 2
	}
	return code, 0
}

// elemCtor is the array element constructor for an element whose own
// smallest encoding starts with code: zero-width forms other than null are
// replaced by the narrowest form with a payload.
func elemCtor(code byte) byte {
	switch code {
	case TypeTrue, TypeFalse:
		return TypeBoolean
	case TypeUint0:
		return TypeSmallUint
	case TypeUlong0:
		return TypeSmallUlong
	case TypeList0:
		return TypeList8
	}
	return code
}

// widenElem appends the payload of the encoded value enc (constructor
// included) re-expressed under the array constructor ctor of its family.
func widenElem(b []byte, ctor byte, enc []byte) []byte {
	code, p := enc[0], enc[1:]
	if code == ctor {
		return append(b, p...)
	}
	switch code {
	case TypeTrue:
		return append(b, 1)
	case TypeFalse:
		return append(b, 0)
	case TypeUint0, TypeUlong0:
		switch ctor {
		case TypeSmallUint, TypeSmallUlong:
			return append(b, 0)
		case TypeUint:
			return append(b, 0, 0, 0, 0)
		}
		return append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	case TypeSmallUint:
		return binary.BigEndian.AppendUint32(b, uint32(p[0]))
	case TypeSmallUlong:
		return binary.BigEndian.AppendUint64(b, uint64(p[0]))
	case TypeSmallInt:
		return binary.BigEndian.AppendUint32(b, uint32(int32(int8(p[0]))))
	case TypeSmallLong:
		return binary.BigEndian.AppendUint64(b, uint64(int64(int8(p[0]))))
	case TypeVbin8, TypeStr8, TypeSym8:
		return append(binary.BigEndian.AppendUint32(b, uint32(p[0])), p[1:]...)
	case TypeList0:
		if ctor == TypeList8 {
			return append(b, 1, 0)
		}
		return append(b, 0, 0, 0, 4, 0, 0, 0, 0)
	case TypeList8, TypeMap8, TypeArray8:
		b = binary.BigEndian.AppendUint32(b, uint32(p[0])+3)
		b = binary.BigEndian.AppendUint32(b, uint32(p[1]))
		return append(b, p[2:]...)
	}
	return append(b, p...) // unreachable: same family and rank means same code
}
