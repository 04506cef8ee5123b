package encoding

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// maxDepth bounds the nesting of composite values so hostile input cannot
// exhaust the stack.
const maxDepth = 32

// maxZeroWidthElems bounds arrays whose elements occupy no bytes (e.g. an
// array of uint0): their count is not limited by the input size, so without
// this cap a 10-byte frame could ask for billions of elements. The bound is
// a budget shared by all arrays read since the last Reset, so a frame full
// of small zero-width arrays cannot multiply it either.
const maxZeroWidthElems = 1 << 16

// Reader decodes AMQP values from a byte slice without copying it.
// The zero value is not usable; use Reset.
type Reader struct {
	buf []byte
	pos int
	zw  int // zero-width array elements decoded since Reset
}

// NewReader returns a Reader over b.
func NewReader(b []byte) *Reader { return &Reader{buf: b} }

// Reset points the reader at b, reusing the Reader.
func (r *Reader) Reset(b []byte) { r.buf, r.pos, r.zw = b, 0, 0 }

// Len reports the number of unread bytes.
func (r *Reader) Len() int { return len(r.buf) - r.pos }

// Pos reports the read position within the buffer given to Reset.
func (r *Reader) Pos() int { return r.pos }

// Bytes returns the unread bytes.
func (r *Reader) Bytes() []byte { return r.buf[r.pos:] }

// Peek returns the next format code without consuming it.
func (r *Reader) Peek() (byte, error) {
	if r.pos >= len(r.buf) {
		return 0, ErrTruncated
	}
	return r.buf[r.pos], nil
}

func (r *Reader) readByte() (byte, error) {
	if r.pos >= len(r.buf) {
		return 0, ErrTruncated
	}
	c := r.buf[r.pos]
	r.pos++
	return c, nil
}

func (r *Reader) next(n int) ([]byte, error) {
	if n < 0 || r.Len() < n {
		return nil, ErrTruncated
	}
	b := r.buf[r.pos : r.pos+n]
	r.pos += n
	return b, nil
}

// SkipNull consumes a null and reports true if the next value is null.
func (r *Reader) SkipNull() bool {
	if r.pos < len(r.buf) && r.buf[r.pos] == TypeNull {
		r.pos++
		return true
	}
	return false
}

// fixedWidth returns the payload width of a fixed-width format code, or -1.
func fixedWidth(code byte) int {
	switch code {
	case TypeNull, TypeTrue, TypeFalse, TypeUint0, TypeUlong0, TypeList0:
		return 0
	case TypeBoolean, TypeUbyte, TypeByte, TypeSmallUint, TypeSmallUlong, TypeSmallInt, TypeSmallLong:
		return 1
	case TypeUshort, TypeShort:
		return 2
	case TypeUint, TypeInt, TypeFloat, TypeChar, TypeDecimal32:
		return 4
	case TypeUlong, TypeLong, TypeDouble, TypeTimestamp, TypeDecimal64:
		return 8
	case TypeDecimal128, TypeUUID:
		return 16
	}
	return -1
}

// ReadDescriptor reads the descriptor of a described value. The next byte
// must be 0x00. It returns the numeric code, or the symbol for symbolic
// descriptors (code is then 0 and sym non-empty).
func (r *Reader) ReadDescriptor() (code uint64, sym Symbol, err error) {
	c, err := r.readByte()
	if err != nil {
		return 0, "", err
	}
	if c != TypeDescribed {
		r.pos--
		return 0, "", fmt.Errorf("%w: want described value, got 0x%02x", ErrUnexpected, c)
	}
	p, err := r.Peek()
	if err != nil {
		return 0, "", err
	}
	if p == TypeSym8 || p == TypeSym32 {
		s, err := r.ReadSymbol()
		return 0, s, err
	}
	code, err = r.ReadUlong()
	return code, "", err
}

// ReadListHeader reads a list constructor and returns its element count.
// The elements follow; the caller reads exactly count values or calls
// SkipN for the rest. Callers that need the list's declared end (to check
// that the elements fill it exactly) use ReadListHeaderEnd.
func (r *Reader) ReadListHeader() (count int, err error) {
	count, _, err = r.ReadListHeaderEnd()
	return count, err
}

// ReadListHeaderEnd is ReadListHeader that also returns the position (as
// reported by Pos) at which the list's encoded size says it ends. After
// reading the elements, Pos must equal end; anything else means the size
// field disagrees with the content.
func (r *Reader) ReadListHeaderEnd() (count, end int, err error) {
	c, err := r.readByte()
	if err != nil {
		return 0, 0, err
	}
	count, end, err = r.listHeader(c)
	if err != nil && c != TypeList0 && c != TypeList8 && c != TypeList32 {
		r.pos--
	}
	return count, end, err
}

// listHeader reads the size and count of a list whose constructor c has
// been consumed. It never rewinds, so arrays can use it for elements that
// share one constructor.
func (r *Reader) listHeader(c byte) (count, end int, err error) {
	switch c {
	case TypeList0:
		return 0, r.pos, nil
	case TypeList8:
		b, err := r.next(2)
		if err != nil {
			return 0, 0, err
		}
		size, n := int(b[0]), int(b[1])
		if size < 1 || size-1 > r.Len() || n > size-1 {
			return 0, 0, fmt.Errorf("%w: list8 size %d count %d", ErrBadSize, size, n)
		}
		return n, r.pos + size - 1, nil
	case TypeList32:
		b, err := r.next(8)
		if err != nil {
			return 0, 0, err
		}
		size, n := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
		if size < 4 || uint64(size-4) > uint64(r.Len()) || n > size-4 {
			return 0, 0, fmt.Errorf("%w: list32 size %d count %d", ErrBadSize, size, n)
		}
		return int(n), r.pos + int(size-4), nil
	}
	return 0, 0, fmt.Errorf("%w: want list, got 0x%02x", ErrUnexpected, c)
}

// ReadMapHeader reads a map constructor and returns the number of entries
// (keys plus values, so always even).
func (r *Reader) ReadMapHeader() (count int, err error) {
	c, err := r.readByte()
	if err != nil {
		return 0, err
	}
	count, _, err = r.mapHeader(c)
	if err != nil && c != TypeMap8 && c != TypeMap32 {
		r.pos--
	}
	return count, err
}

// mapHeader reads the size and count of a map whose constructor c has been
// consumed, returning the count and the position where the map ends.
func (r *Reader) mapHeader(c byte) (count, end int, err error) {
	var size, n uint32
	switch c {
	case TypeMap8:
		b, err := r.next(2)
		if err != nil {
			return 0, 0, err
		}
		size, n = uint32(b[0]), uint32(b[1])
		if size < 1 {
			return 0, 0, ErrBadSize
		}
		size--
	case TypeMap32:
		b, err := r.next(8)
		if err != nil {
			return 0, 0, err
		}
		size, n = binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
		if size < 4 {
			return 0, 0, ErrBadSize
		}
		size -= 4
	default:
		return 0, 0, fmt.Errorf("%w: want map, got 0x%02x", ErrUnexpected, c)
	}
	if uint64(size) > uint64(r.Len()) || n > size || n%2 != 0 {
		return 0, 0, fmt.Errorf("%w: map size %d count %d", ErrBadSize, size, n)
	}
	return int(n), r.pos + int(size), nil
}

// ReadBool reads a boolean in any of its three forms.
func (r *Reader) ReadBool() (bool, error) {
	c, err := r.readByte()
	if err != nil {
		return false, err
	}
	v, err := r.boolOf(c)
	if err != nil && c != TypeTrue && c != TypeFalse && c != TypeBoolean {
		r.pos--
	}
	return v, err
}

// boolOf reads the payload of a boolean whose constructor c was consumed.
func (r *Reader) boolOf(c byte) (bool, error) {
	switch c {
	case TypeTrue:
		return true, nil
	case TypeFalse:
		return false, nil
	case TypeBoolean:
		b, err := r.readByte()
		if err != nil {
			return false, err
		}
		switch b {
		case 0:
			return false, nil
		case 1:
			return true, nil
		}
		return false, fmt.Errorf("%w: boolean byte 0x%02x", ErrInvalidCode, b)
	}
	return false, fmt.Errorf("%w: want boolean, got 0x%02x", ErrUnexpected, c)
}

// ReadUlong reads any unsigned integer encoding (ubyte to ulong) as uint64,
// since peers may widen or narrow numeric fields.
func (r *Reader) ReadUlong() (uint64, error) {
	c, err := r.readByte()
	if err != nil {
		return 0, err
	}
	switch c {
	case TypeUint0, TypeUlong0:
		return 0, nil
	case TypeUbyte, TypeSmallUint, TypeSmallUlong:
		b, err := r.readByte()
		return uint64(b), err
	case TypeUshort:
		b, err := r.next(2)
		if err != nil {
			return 0, err
		}
		return uint64(binary.BigEndian.Uint16(b)), nil
	case TypeUint:
		b, err := r.next(4)
		if err != nil {
			return 0, err
		}
		return uint64(binary.BigEndian.Uint32(b)), nil
	case TypeUlong:
		b, err := r.next(8)
		if err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint64(b), nil
	}
	r.pos--
	return 0, fmt.Errorf("%w: want unsigned integer, got 0x%02x", ErrUnexpected, c)
}

// ReadUint reads an unsigned integer that must fit in 32 bits.
func (r *Reader) ReadUint() (uint32, error) {
	v, err := r.ReadUlong()
	if err != nil {
		return 0, err
	}
	if v > math.MaxUint32 {
		return 0, fmt.Errorf("%w: %d overflows uint", ErrBadSize, v)
	}
	return uint32(v), nil
}

// ReadUshort reads an unsigned integer that must fit in 16 bits.
func (r *Reader) ReadUshort() (uint16, error) {
	v, err := r.ReadUlong()
	if err != nil {
		return 0, err
	}
	if v > math.MaxUint16 {
		return 0, fmt.Errorf("%w: %d overflows ushort", ErrBadSize, v)
	}
	return uint16(v), nil
}

// ReadUbyte reads an unsigned integer that must fit in 8 bits.
func (r *Reader) ReadUbyte() (uint8, error) {
	v, err := r.ReadUlong()
	if err != nil {
		return 0, err
	}
	if v > math.MaxUint8 {
		return 0, fmt.Errorf("%w: %d overflows ubyte", ErrBadSize, v)
	}
	return uint8(v), nil
}

// ReadLong reads any signed integer encoding as int64.
func (r *Reader) ReadLong() (int64, error) {
	c, err := r.readByte()
	if err != nil {
		return 0, err
	}
	switch c {
	case TypeByte, TypeSmallInt, TypeSmallLong:
		b, err := r.readByte()
		return int64(int8(b)), err
	case TypeShort:
		b, err := r.next(2)
		if err != nil {
			return 0, err
		}
		return int64(int16(binary.BigEndian.Uint16(b))), nil
	case TypeInt:
		b, err := r.next(4)
		if err != nil {
			return 0, err
		}
		return int64(int32(binary.BigEndian.Uint32(b))), nil
	case TypeLong:
		b, err := r.next(8)
		if err != nil {
			return 0, err
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	r.pos--
	return 0, fmt.Errorf("%w: want signed integer, got 0x%02x", ErrUnexpected, c)
}

// ReadTimestamp reads a timestamp.
func (r *Reader) ReadTimestamp() (time.Time, error) {
	c, err := r.readByte()
	if err != nil {
		return time.Time{}, err
	}
	if c != TypeTimestamp {
		r.pos--
		return time.Time{}, fmt.Errorf("%w: want timestamp, got 0x%02x", ErrUnexpected, c)
	}
	b, err := r.next(8)
	if err != nil {
		return time.Time{}, err
	}
	return msEpoch(int64(binary.BigEndian.Uint64(b))), nil
}

// ReadBinary reads a binary value. The result aliases the input.
func (r *Reader) ReadBinary() ([]byte, error) {
	c, err := r.readByte()
	if err != nil {
		return nil, err
	}
	switch c {
	case TypeVbin8, TypeVbin32:
		return r.variable(c == TypeVbin32)
	}
	r.pos--
	return nil, fmt.Errorf("%w: want binary, got 0x%02x", ErrUnexpected, c)
}

func (r *Reader) variable(wide bool) ([]byte, error) {
	var n int
	if wide {
		b, err := r.next(4)
		if err != nil {
			return nil, err
		}
		n64 := binary.BigEndian.Uint32(b)
		if uint64(n64) > uint64(r.Len()) {
			return nil, ErrTruncated
		}
		n = int(n64)
	} else {
		b, err := r.readByte()
		if err != nil {
			return nil, err
		}
		n = int(b)
	}
	return r.next(n)
}

// ReadStringBytes reads a string or symbol and returns its bytes without
// allocating; the result aliases the input.
func (r *Reader) ReadStringBytes() ([]byte, error) {
	c, err := r.readByte()
	if err != nil {
		return nil, err
	}
	switch c {
	case TypeStr8, TypeSym8:
		return r.variable(false)
	case TypeStr32, TypeSym32:
		return r.variable(true)
	}
	r.pos--
	return nil, fmt.Errorf("%w: want string, got 0x%02x", ErrUnexpected, c)
}

// ReadString reads a string (a symbol is accepted too, since peers mix them up).
func (r *Reader) ReadString() (string, error) {
	b, err := r.ReadStringBytes()
	if err != nil {
		return "", err
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("%w: string is not valid UTF-8", ErrInvalidCode)
	}
	return string(b), nil
}

// ReadSymbol reads a symbol (a string is accepted too).
func (r *Reader) ReadSymbol() (Symbol, error) {
	b, err := r.ReadStringBytes()
	return Symbol(b), err
}

// ReadSymbols reads a multiple-symbol field: a single symbol or an array of symbols.
func (r *Reader) ReadSymbols() ([]Symbol, error) {
	c, err := r.Peek()
	if err != nil {
		return nil, err
	}
	if c != TypeArray8 && c != TypeArray32 {
		s, err := r.ReadSymbol()
		if err != nil {
			return nil, err
		}
		return []Symbol{s}, nil
	}
	v, err := r.readAny(0)
	if err != nil {
		return nil, err
	}
	arr := v.(Array)
	out := make([]Symbol, 0, len(arr.Elements))
	for _, e := range arr.Elements {
		switch s := e.(type) {
		case Symbol:
			out = append(out, s)
		case string:
			out = append(out, Symbol(s))
		default:
			return nil, fmt.Errorf("%w: symbol array holds %T", ErrUnexpected, e)
		}
	}
	return out, nil
}

// ReadAny reads one value of any type into its generic Go form.
func (r *Reader) ReadAny() (any, error) { return r.readAny(0) }

func (r *Reader) readAny(depth int) (any, error) {
	if depth > maxDepth {
		return nil, ErrTooDeep
	}
	c, err := r.readByte()
	if err != nil {
		return nil, err
	}
	if c == TypeDescribed {
		desc, err := r.readAny(depth + 1)
		if err != nil {
			return nil, err
		}
		switch desc.(type) {
		case uint64, Symbol:
		default:
			return nil, fmt.Errorf("%w: descriptor of type %T", ErrInvalidCode, desc)
		}
		val, err := r.readAny(depth + 1)
		if err != nil {
			return nil, err
		}
		return &Described{Descriptor: desc, Value: val}, nil
	}
	return r.readOfCode(c, depth)
}

// readOfCode decodes the payload of a value whose constructor c has already
// been consumed. Arrays reuse it for their elements.
func (r *Reader) readOfCode(c byte, depth int) (any, error) {
	switch c {
	case TypeNull:
		return nil, nil
	case TypeTrue:
		return true, nil
	case TypeFalse:
		return false, nil
	case TypeBoolean:
		return r.boolOf(c)
	case TypeUbyte:
		b, err := r.readByte()
		return b, err
	case TypeUshort:
		b, err := r.next(2)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint16(b), nil
	case TypeUint0:
		return uint32(0), nil
	case TypeSmallUint:
		b, err := r.readByte()
		return uint32(b), err
	case TypeUint:
		b, err := r.next(4)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint32(b), nil
	case TypeUlong0:
		return uint64(0), nil
	case TypeSmallUlong:
		b, err := r.readByte()
		return uint64(b), err
	case TypeUlong:
		b, err := r.next(8)
		if err != nil {
			return nil, err
		}
		return binary.BigEndian.Uint64(b), nil
	case TypeByte:
		b, err := r.readByte()
		return int8(b), err
	case TypeShort:
		b, err := r.next(2)
		if err != nil {
			return nil, err
		}
		return int16(binary.BigEndian.Uint16(b)), nil
	case TypeSmallInt:
		b, err := r.readByte()
		return int32(int8(b)), err
	case TypeInt:
		b, err := r.next(4)
		if err != nil {
			return nil, err
		}
		return int32(binary.BigEndian.Uint32(b)), nil
	case TypeSmallLong:
		b, err := r.readByte()
		return int64(int8(b)), err
	case TypeLong:
		b, err := r.next(8)
		if err != nil {
			return nil, err
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	case TypeFloat:
		b, err := r.next(4)
		if err != nil {
			return nil, err
		}
		return math.Float32frombits(binary.BigEndian.Uint32(b)), nil
	case TypeDouble:
		b, err := r.next(8)
		if err != nil {
			return nil, err
		}
		return math.Float64frombits(binary.BigEndian.Uint64(b)), nil
	case TypeDecimal32:
		var d Decimal32
		b, err := r.next(4)
		copy(d[:], b)
		return d, err
	case TypeDecimal64:
		var d Decimal64
		b, err := r.next(8)
		copy(d[:], b)
		return d, err
	case TypeDecimal128:
		var d Decimal128
		b, err := r.next(16)
		copy(d[:], b)
		return d, err
	case TypeChar:
		b, err := r.next(4)
		if err != nil {
			return nil, err
		}
		return Char(binary.BigEndian.Uint32(b)), nil
	case TypeTimestamp:
		b, err := r.next(8)
		if err != nil {
			return nil, err
		}
		return msEpoch(int64(binary.BigEndian.Uint64(b))), nil
	case TypeUUID:
		var u UUID
		b, err := r.next(16)
		copy(u[:], b)
		return u, err
	case TypeVbin8, TypeVbin32:
		return r.variable(c == TypeVbin32)
	case TypeStr8, TypeStr32:
		b, err := r.variable(c == TypeStr32)
		if err != nil {
			return nil, err
		}
		if !utf8.Valid(b) {
			return nil, fmt.Errorf("%w: string is not valid UTF-8", ErrInvalidCode)
		}
		return string(b), nil
	case TypeSym8, TypeSym32:
		b, err := r.variable(c == TypeSym32)
		return Symbol(b), err
	case TypeList0, TypeList8, TypeList32:
		n, end, err := r.listHeader(c)
		if err != nil {
			return nil, err
		}
		l := make([]any, n)
		for i := range l {
			if l[i], err = r.readAny(depth + 1); err != nil {
				return nil, err
			}
		}
		if r.pos != end {
			return nil, fmt.Errorf("%w: list size disagrees with its elements", ErrBadSize)
		}
		return l, nil
	case TypeMap8, TypeMap32:
		n, end, err := r.mapHeader(c)
		if err != nil {
			return nil, err
		}
		m := make(map[any]any, n/2)
		for i := 0; i < n; i += 2 {
			k, err := r.readAny(depth + 1)
			if err != nil {
				return nil, err
			}
			v, err := r.readAny(depth + 1)
			if err != nil {
				return nil, err
			}
			switch kk := k.(type) {
			case []byte:
				k = BinaryKey(kk)
			case []any, map[any]any, Array, *Described:
				return nil, fmt.Errorf("%w: map key of type %T", ErrUnexpected, k)
			}
			m[k] = v
		}
		if r.pos != end {
			return nil, fmt.Errorf("%w: map size disagrees with its entries", ErrBadSize)
		}
		return m, nil
	case TypeArray8, TypeArray32:
		return r.readArray(c == TypeArray32, depth)
	}
	return nil, fmt.Errorf("%w: 0x%02x", ErrInvalidCode, c)
}

func (r *Reader) readArray(wide bool, depth int) (any, error) {
	// Arrays of arrays recurse here without passing through readAny, so
	// the depth bound must be checked here too.
	if depth > maxDepth {
		return nil, ErrTooDeep
	}
	var size, n uint64
	if wide {
		b, err := r.next(8)
		if err != nil {
			return nil, err
		}
		size, n = uint64(binary.BigEndian.Uint32(b)), uint64(binary.BigEndian.Uint32(b[4:]))
		if size < 4 {
			return nil, ErrBadSize
		}
		size -= 4
	} else {
		b, err := r.next(2)
		if err != nil {
			return nil, err
		}
		size, n = uint64(b[0]), uint64(b[1])
		if size < 1 {
			return nil, ErrBadSize
		}
		size--
	}
	if size > uint64(r.Len()) {
		return nil, ErrTruncated
	}
	end := r.pos + int(size)
	var arr Array
	c, err := r.readByte()
	if err != nil {
		return nil, err
	}
	if c == TypeDescribed {
		if arr.Descriptor, err = r.readAny(depth + 1); err != nil {
			return nil, err
		}
		switch arr.Descriptor.(type) {
		case uint64, Symbol:
		default:
			return nil, fmt.Errorf("%w: array descriptor of type %T", ErrInvalidCode, arr.Descriptor)
		}
		if c, err = r.readByte(); err != nil {
			return nil, err
		}
	}
	if c == TypeDescribed {
		return nil, fmt.Errorf("%w: nested described array constructor", ErrInvalidCode)
	}
	// The constructor (and descriptor) must lie inside the array's size;
	// otherwise end-r.pos below is negative and the count checks, done in
	// uint64, would wave through any count.
	if r.pos > end {
		return nil, fmt.Errorf("%w: array constructor beyond the array size", ErrBadSize)
	}
	w := fixedWidth(c)
	switch {
	case w == 0 && n > uint64(maxZeroWidthElems-r.zw):
		return nil, fmt.Errorf("%w: %d zero-width array elements", ErrBadSize, n)
	case w > 0 && n*uint64(w) > uint64(end-r.pos):
		return nil, fmt.Errorf("%w: array count %d", ErrBadSize, n)
	case w < 0 && n > uint64(end-r.pos):
		return nil, fmt.Errorf("%w: array count %d", ErrBadSize, n)
	}
	if w == 0 {
		r.zw += int(n)
	}
	arr.Elements = make([]any, n)
	for i := range arr.Elements {
		v, err := r.readOfCode(c, depth+1)
		if err != nil {
			return nil, err
		}
		if arr.Descriptor != nil {
			v = &Described{Descriptor: arr.Descriptor, Value: v}
		}
		arr.Elements[i] = v
	}
	if r.pos != end {
		return nil, fmt.Errorf("%w: array size disagrees with its elements", ErrBadSize)
	}
	return arr, nil
}

// Skip consumes one value of any type without building it.
func (r *Reader) Skip() error { return r.skip(0) }

func (r *Reader) skip(depth int) error {
	if depth > maxDepth {
		return ErrTooDeep
	}
	c, err := r.readByte()
	if err != nil {
		return err
	}
	if c == TypeDescribed {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
		return r.skip(depth + 1)
	}
	if w := fixedWidth(c); w >= 0 {
		_, err := r.next(w)
		return err
	}
	switch c {
	case TypeVbin8, TypeStr8, TypeSym8:
		_, err := r.variable(false)
		return err
	case TypeVbin32, TypeStr32, TypeSym32:
		_, err := r.variable(true)
		return err
	case TypeList8, TypeMap8, TypeArray8:
		b, err := r.readByte()
		if err != nil {
			return err
		}
		_, err = r.next(int(b))
		return err
	case TypeList32, TypeMap32, TypeArray32:
		b, err := r.next(4)
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(n) > uint64(r.Len()) {
			return ErrTruncated
		}
		_, err = r.next(int(n))
		return err
	}
	return fmt.Errorf("%w: 0x%02x", ErrInvalidCode, c)
}

// SkipN skips n values.
func (r *Reader) SkipN(n int) error {
	for i := 0; i < n; i++ {
		if err := r.skip(0); err != nil {
			return err
		}
	}
	return nil
}

// RawValue consumes one value and returns its encoded bytes (aliasing the input).
func (r *Reader) RawValue() ([]byte, error) {
	start := r.pos
	if err := r.skip(0); err != nil {
		return nil, err
	}
	return r.buf[start:r.pos], nil
}

// ReadMap reads a map into its generic form (nil for null).
func (r *Reader) ReadMap() (map[any]any, error) {
	if r.SkipNull() {
		return nil, nil
	}
	c, err := r.Peek()
	if err != nil {
		return nil, err
	}
	if c != TypeMap8 && c != TypeMap32 {
		return nil, fmt.Errorf("%w: want map, got 0x%02x", ErrUnexpected, c)
	}
	v, err := r.readAny(0)
	if err != nil {
		return nil, err
	}
	return v.(map[any]any), nil
}
