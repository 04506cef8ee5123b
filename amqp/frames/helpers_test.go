package frames

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// Test vectors are written as spaced hex, with a few helpers that apply
// the spec's length rules literally, so the frames under test are built
// independently of the encoder being tested.

// hx decodes spaced hex.
func hx(t testing.TB, s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		if t == nil {
			panic(err)
		}
		t.Helper()
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func hexLen(s string) int { return len(strings.ReplaceAll(s, " ", "")) / 2 }

// str8 is a str8-utf8 value, sym8 a sym8 value, vbin8 a vbin8 value.
func str8(s string) string  { return fmt.Sprintf("a1 %02x %x", len(s), s) }
func sym8(s string) string  { return fmt.Sprintf("a3 %02x %x", len(s), s) }
func vbin8(b []byte) string { return fmt.Sprintf("a0 %02x %x", len(b), b) }

// list8 is a list8 of the given encoded fields: size counts the count
// byte and the fields (part 1, 1.6.22).
func list8(fields ...string) string {
	body := strings.Join(fields, " ")
	if hexLen(body)+1 > 255 {
		panic("list8 body too large for a test vector")
	}
	return fmt.Sprintf("c0 %02x %02x %s", hexLen(body)+1, len(fields), body)
}

// map8 is a map8 of alternating encoded keys and values.
func map8(kv ...string) string {
	body := strings.Join(kv, " ")
	return fmt.Sprintf("c1 %02x %02x %s", hexLen(body)+1, len(kv), body)
}

// described prefixes a value with a smallulong descriptor.
func described(code byte, value string) string { return fmt.Sprintf("00 53 %02x %s", code, value) }

// frame wraps a body in a frame header with data offset 2.
func frame(typ byte, channel uint16, body string) string {
	return fmt.Sprintf("%08x 02 %02x %04x %s", hexLen(body)+8, typ, channel, body)
}

// symArray8 is an array8 of sym8 elements (part 1, 1.6.24): size counts the
// count byte, the constructor and the elements.
func symArray8(syms ...string) string {
	var p []string
	for _, s := range syms {
		p = append(p, fmt.Sprintf("%02x %x", len(s), s))
	}
	body := strings.Join(p, " ")
	return fmt.Sprintf("e0 %02x %02x a3 %s", hexLen(body)+2, len(syms), body)
}
