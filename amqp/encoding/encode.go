package encoding

import (
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

// appendMap writes keys in a stable order so encodings are reproducible
// (tests and fuzzers compare bytes); AMQP gives map order no meaning.
func appendMap(b []byte, m map[any]any) ([]byte, error) {
	keys := make([]any, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return fmt.Sprintf("%T:%v", keys[i], keys[i]) < fmt.Sprintf("%T:%v", keys[j], keys[j])
	})
	b, mark := BeginMap(b)
	var err error
	for _, k := range keys {
		if b, err = AppendAny(b, k); err != nil {
			return nil, err
		}
		if b, err = AppendAny(b, m[k]); err != nil {
			return nil, err
		}
	}
	return EndMap(b, mark, 2*len(keys)), nil
}

// AppendArray appends an array. All elements must have the same Go type;
// the element constructor is the widest form that type needs, since array
// elements share one constructor.
func AppendArray(b []byte, a Array) ([]byte, error) {
	start := len(b)
	b = append(b, TypeArray32, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(a.Elements)))
	var err error
	if a.Descriptor != nil {
		b = append(b, TypeDescribed)
		if b, err = AppendAny(b, a.Descriptor); err != nil {
			return nil, err
		}
	}
	if len(a.Elements) == 0 {
		b = append(b, TypeNull)
	} else {
		code, err := arrayCode(a.Elements[0], a.Descriptor != nil)
		if err != nil {
			return nil, err
		}
		b = append(b, code)
		for _, e := range a.Elements {
			if a.Descriptor != nil {
				if d, ok := e.(*Described); ok {
					e = d.Value
				}
			}
			if b, err = appendArrayElem(b, code, e); err != nil {
				return nil, err
			}
		}
	}
	binary.BigEndian.PutUint32(b[start+1:], uint32(len(b)-start-5))
	return b, nil
}

func arrayCode(e any, described bool) (byte, error) {
	if d, ok := e.(*Described); ok && described {
		e = d.Value
	}
	switch e.(type) {
	case bool:
		return TypeBoolean, nil
	case uint8:
		return TypeUbyte, nil
	case uint16:
		return TypeUshort, nil
	case uint32:
		return TypeUint, nil
	case uint64, uint:
		return TypeUlong, nil
	case int8:
		return TypeByte, nil
	case int16:
		return TypeShort, nil
	case int32:
		return TypeInt, nil
	case int64, int:
		return TypeLong, nil
	case float32:
		return TypeFloat, nil
	case float64:
		return TypeDouble, nil
	case Char:
		return TypeChar, nil
	case time.Time:
		return TypeTimestamp, nil
	case UUID:
		return TypeUUID, nil
	case []byte:
		return TypeVbin32, nil
	case string:
		return TypeStr32, nil
	case Symbol:
		return TypeSym32, nil
	case []any:
		return TypeList32, nil
	case map[any]any:
		return TypeMap32, nil
	}
	return 0, fmt.Errorf("encoding: cannot encode %T as an array element", e)
}

// appendArrayElem appends e without its constructor, in the form code names.
func appendArrayElem(b []byte, code byte, e any) ([]byte, error) {
	tmp, err := AppendAny(nil, e)
	if err != nil {
		return nil, err
	}
	switch code {
	case TypeBoolean:
		v, ok := e.(bool)
		if !ok {
			return nil, fmt.Errorf("encoding: mixed array element %T", e)
		}
		if v {
			return append(b, 1), nil
		}
		return append(b, 0), nil
	case TypeUint, TypeUlong, TypeInt, TypeLong, TypeVbin32, TypeStr32, TypeSym32, TypeList32, TypeMap32:
		// Re-read the compact form and widen it to the shared constructor.
		r := NewReader(tmp)
		switch code {
		case TypeUint:
			v, err := r.ReadUint()
			if err != nil {
				return nil, err
			}
			return binary.BigEndian.AppendUint32(b, v), nil
		case TypeUlong:
			v, err := r.ReadUlong()
			if err != nil {
				return nil, err
			}
			return binary.BigEndian.AppendUint64(b, v), nil
		case TypeInt:
			v, err := r.ReadLong()
			if err != nil {
				return nil, err
			}
			return binary.BigEndian.AppendUint32(b, uint32(int32(v))), nil
		case TypeLong:
			v, err := r.ReadLong()
			if err != nil {
				return nil, err
			}
			return binary.BigEndian.AppendUint64(b, uint64(v)), nil
		case TypeVbin32, TypeStr32, TypeSym32:
			v, err := r.readVariableAny()
			if err != nil {
				return nil, err
			}
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			return append(b, v...), nil
		case TypeList32, TypeMap32:
			c := tmp[0]
			if c == TypeList0 {
				return append(b, 0, 0, 0, 4, 0, 0, 0, 0), nil
			}
			if c == TypeList8 || c == TypeMap8 {
				size, count := uint32(tmp[1]), uint32(tmp[2])
				b = binary.BigEndian.AppendUint32(b, size+3)
				b = binary.BigEndian.AppendUint32(b, count)
				return append(b, tmp[3:]...), nil
			}
			return append(b, tmp[1:]...), nil
		}
	}
	if len(tmp) == 0 || tmp[0] != code {
		return nil, fmt.Errorf("encoding: mixed array element %T", e)
	}
	return append(b, tmp[1:]...), nil
}

func (r *Reader) readVariableAny() ([]byte, error) {
	c, err := r.readByte()
	if err != nil {
		return nil, err
	}
	switch c {
	case TypeVbin8, TypeStr8, TypeSym8:
		return r.variable(false)
	case TypeVbin32, TypeStr32, TypeSym32:
		return r.variable(true)
	}
	return nil, ErrUnexpected
}
