// Package encoding implements the AMQP 1.0 type system (OASIS AMQP 1.0 part 1):
// encoders that always choose the smallest valid form, and a decoder that
// accepts every valid form.
//
// Generic values decode into these Go types:
//
//	null -> nil               boolean -> bool        ubyte..ulong -> uint8..uint64
//	byte..long -> int8..int64 float -> float32       double -> float64
//	decimal32/64/128 -> Decimal32/64/128 (raw bytes)  char -> Char
//	timestamp -> time.Time (UTC, ms precision)        uuid -> UUID
//	binary -> []byte          string -> string       symbol -> Symbol
//	list -> []any             map -> map[any]any     array -> Array
//	described -> *Described
//
// Decoded []byte values alias the input buffer; callers that keep them past
// the buffer's lifetime must copy (the engine copies what it hands off).
package encoding

import (
	"errors"
	"fmt"
	"time"
)

// Format codes of the AMQP 1.0 primitive encodings.
const (
	TypeDescribed  byte = 0x00
	TypeNull       byte = 0x40
	TypeTrue       byte = 0x41
	TypeFalse      byte = 0x42
	TypeUint0      byte = 0x43
	TypeUlong0     byte = 0x44
	TypeList0      byte = 0x45
	TypeBoolean    byte = 0x56
	TypeUbyte      byte = 0x50
	TypeByte       byte = 0x51
	TypeSmallUint  byte = 0x52
	TypeSmallUlong byte = 0x53
	TypeSmallInt   byte = 0x54
	TypeSmallLong  byte = 0x55
	TypeUshort     byte = 0x60
	TypeShort      byte = 0x61
	TypeUint       byte = 0x70
	TypeInt        byte = 0x71
	TypeFloat      byte = 0x72
	TypeChar       byte = 0x73
	TypeDecimal32  byte = 0x74
	TypeUlong      byte = 0x80
	TypeLong       byte = 0x81
	TypeDouble     byte = 0x82
	TypeTimestamp  byte = 0x83
	TypeDecimal64  byte = 0x84
	TypeDecimal128 byte = 0x94
	TypeUUID       byte = 0x98
	TypeVbin8      byte = 0xa0
	TypeStr8       byte = 0xa1
	TypeSym8       byte = 0xa3
	TypeVbin32     byte = 0xb0
	TypeStr32      byte = 0xb1
	TypeSym32      byte = 0xb3
	TypeList8      byte = 0xc0
	TypeMap8       byte = 0xc1
	TypeList32     byte = 0xd0
	TypeMap32      byte = 0xd1
	TypeArray8     byte = 0xe0
	TypeArray32    byte = 0xf0
)

// Symbol is an AMQP symbol: ASCII text used for keys, conditions and descriptors.
type Symbol string

// UUID is an AMQP uuid in network byte order.
type UUID [16]byte

// String formats the UUID in its canonical 8-4-4-4-12 form.
func (u UUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// ParseUUID parses the canonical 36-character form.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("encoding: %q is not a uuid", s)
	}
	j := 0
	for i := 0; i < 36; {
		if s[i] == '-' {
			i++
			continue
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return u, fmt.Errorf("encoding: %q is not a uuid", s)
		}
		u[j] = hi<<4 | lo
		j++
		i += 2
	}
	return u, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Char is an AMQP char: a single UTF-32BE code point.
type Char rune

// Decimal32 keeps an IEEE 754 decimal32 value as its raw bytes.
type Decimal32 [4]byte

// Decimal64 keeps an IEEE 754 decimal64 value as its raw bytes.
type Decimal64 [8]byte

// Decimal128 keeps an IEEE 754 decimal128 value as its raw bytes.
type Decimal128 [16]byte

// Array is an AMQP array whose elements share one constructor. Elements are
// generic values; Descriptor is set when the element constructor is described.
type Array struct {
	Descriptor any
	Elements   []any
}

// Described is a described value whose descriptor the decoder does not know
// (or a known one met in a generic position). It is kept, never rejected.
type Described struct {
	Descriptor any // Symbol or uint64
	Value      any
}

// BinaryKey stands in for a binary map key, because []byte is not a valid Go map key.
type BinaryKey string

// Errors returned by the decoder. They wrap into the engine's amqp:decode-error.
var (
	ErrTruncated   = errors.New("encoding: truncated value")
	ErrInvalidCode = errors.New("encoding: invalid format code")
	ErrTooDeep     = errors.New("encoding: nesting too deep")
	ErrBadSize     = errors.New("encoding: size or count out of range")
	ErrUnexpected  = errors.New("encoding: unexpected type")
)

// msEpoch converts milliseconds since the Unix epoch to a UTC time.
func msEpoch(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
