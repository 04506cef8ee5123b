package telemetry

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
)

// Validation runs on every ingested message, because the record is later
// decoded by every Event Hubs consumer of its partition: one malformed
// message stored would break them all. It walks the encoding without
// building values, so it does not allocate (arrays aside, which telemetry
// practically never carries).

// maxDepth bounds nesting, like the engine's decoder.
const maxDepth = 32

// checkSection validates one message section completely.
func checkSection(s frames.Section) error {
	var r encoding.Reader
	r.Reset(s.Raw)
	if _, _, err := r.ReadDescriptor(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadMessage, sectionNames[s.Code], err)
	}
	v, err := r.RawValue()
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrBadMessage, sectionNames[s.Code], err)
	}
	if err := checkSectionValue(s.Code, v); err != nil {
		return fmt.Errorf("%w: %s section: %w", ErrBadMessage, sectionNames[s.Code], err)
	}
	return nil
}

func checkSectionValue(code uint64, v []byte) error {
	switch code {
	case frames.CodeHeader:
		return checkFields(v, headerFields[:])
	case frames.CodeProperties:
		return checkFields(v, propertyFields[:])
	case frames.CodeDeliveryAnn, frames.CodeMessageAnn, frames.CodeFooter:
		if v[0] == encoding.TypeNull {
			return nil
		}
		return checkMap(v, nil)
	case frames.CodeAppProperties:
		if v[0] == encoding.TypeNull {
			return nil
		}
		return checkMap(v, func(k []byte) error {
			if k[0] != encoding.TypeStr8 && k[0] != encoding.TypeStr32 {
				return fmt.Errorf("key of type 0x%02x; application-properties keys must be strings", k[0])
			}
			return nil
		})
	case frames.CodeData:
		if v[0] != encoding.TypeVbin8 && v[0] != encoding.TypeVbin32 {
			return fmt.Errorf("value of type 0x%02x; want binary", v[0])
		}
		return nil
	case frames.CodeSequence:
		if !isList(v[0]) {
			return fmt.Errorf("value of type 0x%02x; want a list", v[0])
		}
	}
	return checkValue(v, 0)
}

// Allowed encodings of the header and properties fields (null is always
// allowed). Strings and symbols are both accepted where the engine's own
// decoder accepts both.
var (
	boolCodes   = []byte{encoding.TypeTrue, encoding.TypeFalse, encoding.TypeBoolean}
	uintCodes   = []byte{encoding.TypeUint0, encoding.TypeSmallUint, encoding.TypeUint}
	textCodes   = []byte{encoding.TypeStr8, encoding.TypeStr32, encoding.TypeSym8, encoding.TypeSym32}
	binaryCodes = []byte{encoding.TypeVbin8, encoding.TypeVbin32}
	timeCodes   = []byte{encoding.TypeTimestamp}
	idCodes     = []byte{
		encoding.TypeUlong0, encoding.TypeSmallUlong, encoding.TypeUlong, encoding.TypeUUID,
		encoding.TypeVbin8, encoding.TypeVbin32, encoding.TypeStr8, encoding.TypeStr32,
		encoding.TypeUint0, encoding.TypeSmallUint, encoding.TypeUint,
	}
)

type field struct {
	name  string
	codes []byte
}

var headerFields = [...]field{
	{"durable", boolCodes}, {"priority", []byte{encoding.TypeUbyte}}, {"ttl", uintCodes},
	{"first-acquirer", boolCodes}, {"delivery-count", uintCodes},
}

var propertyFields = [...]field{
	{"message-id", idCodes}, {"user-id", binaryCodes}, {"to", textCodes}, {"subject", textCodes},
	{"reply-to", textCodes}, {"correlation-id", idCodes}, {"content-type", textCodes},
	{"content-encoding", textCodes}, {"absolute-expiry-time", timeCodes}, {"creation-time", timeCodes},
	{"group-id", textCodes}, {"group-sequence", uintCodes}, {"reply-to-group-id", textCodes},
}

// checkFields validates a composite list whose leading fields have known
// types; further fields are only checked for well-formedness.
func checkFields(v []byte, fields []field) error {
	if !isList(v[0]) {
		return fmt.Errorf("value of type 0x%02x; want a list", v[0])
	}
	return checkElems(v, 0, func(i int, e []byte) error {
		if i < len(fields) && e[0] != encoding.TypeNull && !contains(fields[i].codes, e[0]) {
			return fmt.Errorf("field %s has type 0x%02x", fields[i].name, e[0])
		}
		return nil
	})
}

func contains(codes []byte, c byte) bool {
	for _, x := range codes {
		if x == c {
			return true
		}
	}
	return false
}

// checkMap validates a map; key, if not nil, vets each key.
func checkMap(v []byte, key func([]byte) error) error {
	if v[0] != encoding.TypeMap8 && v[0] != encoding.TypeMap32 {
		return fmt.Errorf("value of type 0x%02x; want a map", v[0])
	}
	return checkElems(v, 0, func(i int, e []byte) error {
		if i%2 == 0 && key != nil {
			return key(e)
		}
		return nil
	})
}

func isList(c byte) bool {
	return c == encoding.TypeList0 || c == encoding.TypeList8 || c == encoding.TypeList32
}

// checkValue validates one encoded value, v being exactly its bytes (as
// Reader.RawValue returns them, so sizes already fit within v).
func checkValue(v []byte, depth int) error {
	if depth > maxDepth {
		return encoding.ErrTooDeep
	}
	switch c := v[0]; c {
	case encoding.TypeDescribed:
		var r encoding.Reader
		r.Reset(v[1:])
		d, err := r.RawValue()
		if err != nil {
			return err
		}
		switch d[0] {
		case encoding.TypeUlong0, encoding.TypeSmallUlong, encoding.TypeUlong, encoding.TypeSym8, encoding.TypeSym32:
		default:
			return fmt.Errorf("descriptor of type 0x%02x", d[0])
		}
		inner, err := r.RawValue()
		if err != nil {
			return err
		}
		if r.Len() != 0 {
			return fmt.Errorf("%w: described value size", encoding.ErrBadSize)
		}
		return checkValue(inner, depth+1)
	case encoding.TypeStr8, encoding.TypeStr32:
		if !utf8.Valid(textOf(v)) {
			return fmt.Errorf("%w: string is not valid UTF-8", encoding.ErrInvalidCode)
		}
	case encoding.TypeBoolean:
		if v[1] > 1 {
			return fmt.Errorf("%w: boolean 0x%02x", encoding.ErrInvalidCode, v[1])
		}
	case encoding.TypeChar:
		if r := rune(binary.BigEndian.Uint32(v[1:])); !utf8.ValidRune(r) {
			return fmt.Errorf("%w: char U+%X", encoding.ErrInvalidCode, r)
		}
	case encoding.TypeList8, encoding.TypeList32, encoding.TypeMap8, encoding.TypeMap32:
		return checkElems(v, depth, nil)
	case encoding.TypeArray8, encoding.TypeArray32:
		// Arrays are rare in telemetry; the generic decoder validates them.
		var r encoding.Reader
		r.Reset(v)
		if _, err := r.ReadAny(); err != nil {
			return err
		}
	}
	return nil
}

// checkElems validates the elements of a list or map whose complete
// encoding is v, calling each (if not nil) with every element's index and
// bytes. The declared count must fill the declared size exactly.
func checkElems(v []byte, depth int, each func(i int, e []byte) error) error {
	var count, start int
	switch v[0] {
	case encoding.TypeList0:
		return nil
	case encoding.TypeList8, encoding.TypeMap8:
		if len(v) < 3 {
			return encoding.ErrTruncated
		}
		count, start = int(v[2]), 3
	case encoding.TypeList32, encoding.TypeMap32:
		if len(v) < 9 {
			return encoding.ErrTruncated
		}
		n := binary.BigEndian.Uint32(v[5:])
		if uint64(n) > uint64(len(v)) {
			return fmt.Errorf("%w: count %d in %d bytes", encoding.ErrBadSize, n, len(v))
		}
		count, start = int(n), 9
	}
	isMap := v[0] == encoding.TypeMap8 || v[0] == encoding.TypeMap32
	if isMap && count%2 != 0 {
		return fmt.Errorf("%w: map with an odd count %d", encoding.ErrBadSize, count)
	}
	var r encoding.Reader
	r.Reset(v[start:])
	for i := range count {
		e, err := r.RawValue()
		if err != nil {
			return fmt.Errorf("element %d: %w", i, err)
		}
		if err := checkValue(e, depth+1); err != nil {
			return fmt.Errorf("element %d: %w", i, err)
		}
		if isMap && i%2 == 0 && !hashableKey(e[0]) {
			// Decoders that build maps (ours, go-amqp, most others) cannot
			// use a compound value as a key: the record would be unreadable.
			return fmt.Errorf("%w: map key %d of type 0x%02x; keys must be scalar", encoding.ErrUnexpected, i/2, e[0])
		}
		if each != nil {
			if err := each(i, e); err != nil {
				return err
			}
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after the last of %d elements", encoding.ErrBadSize, r.Len(), count)
	}
	return nil
}

// hashableKey reports whether a value with constructor c can be a map key
// once decoded: lists, maps, arrays and described values cannot.
func hashableKey(c byte) bool {
	switch c {
	case encoding.TypeList0, encoding.TypeList8, encoding.TypeList32,
		encoding.TypeMap8, encoding.TypeMap32, encoding.TypeArray8, encoding.TypeArray32,
		encoding.TypeDescribed:
		return false
	}
	return true
}
