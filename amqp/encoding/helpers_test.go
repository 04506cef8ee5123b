package encoding

import (
	"bytes"
	"encoding/hex"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// hx turns a spaced hex string ("c0 02 01 41") into bytes, so test vectors
// read like the encoding tables of the spec.
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

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// rep returns n copies of b.
func rep(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// sameValue compares decoded values: exact Go types, floats by bit
// pattern (so NaN equals itself), times by instant, maps entry by entry.
func sameValue(a, b any) bool {
	if reflect.TypeOf(a) != reflect.TypeOf(b) {
		return false
	}
	switch x := a.(type) {
	case float32:
		return math.Float32bits(x) == math.Float32bits(b.(float32))
	case float64:
		return math.Float64bits(x) == math.Float64bits(b.(float64))
	case time.Time:
		return x.Equal(b.(time.Time))
	case []byte:
		return bytes.Equal(x, b.([]byte))
	case []any:
		y := b.([]any)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[any]any:
		y := b.(map[any]any)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if !isSelfEqual(k) {
				continue // NaN keys cannot be looked up; encodings are compared instead
			}
			w, ok := y[k]
			if !ok || !sameValue(v, w) {
				return false
			}
		}
		return true
	case Array:
		y := b.(Array)
		return sameValue(x.Descriptor, y.Descriptor) && sameValue(x.Elements, y.Elements)
	case *Described:
		y := b.(*Described)
		return sameValue(x.Descriptor, y.Descriptor) && sameValue(x.Value, y.Value)
	}
	return reflect.DeepEqual(a, b)
}

func isSelfEqual(k any) bool {
	switch f := k.(type) {
	case float32:
		return f == f
	case float64:
		return f == f
	}
	return true
}

// mustAppend encodes v or fails the test.
func mustAppend(t testing.TB, v any) []byte {
	t.Helper()
	b, err := AppendAny(nil, v)
	if err != nil {
		t.Fatalf("AppendAny(%#v): %v", v, err)
	}
	return b
}
