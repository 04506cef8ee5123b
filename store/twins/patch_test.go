package twins

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// randomDoc builds a JSON document (no nulls) of bounded depth.
func randomDoc(r *rand.Rand, depth int) map[string]any {
	m := map[string]any{}
	for i := range r.IntN(5) {
		k := fmt.Sprintf("k%d", r.IntN(6)+i)
		switch n := r.IntN(6); {
		case n == 0 && depth > 0:
			m[k] = randomDoc(r, depth-1)
		case n == 1:
			m[k] = []any{json.Number(fmt.Sprint(r.IntN(3))), "s"}
		case n == 2:
			m[k] = r.IntN(2) == 0
		case n == 3:
			m[k] = fmt.Sprintf("v%d", r.IntN(3))
		default:
			m[k] = json.Number(fmt.Sprint(r.IntN(3)))
		}
	}
	return m
}

// TestDiffIsTheMergePatchBetweenDocuments: applying diff(old, new) to old
// gives new, for many random pairs; an unchanged document gives an empty
// patch.
func TestDiffIsTheMergePatchBetweenDocuments(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		old, new := randomDoc(r, 3), randomDoc(r, 3)
		if r.IntN(3) == 0 {
			// Related documents exercise nested merges.
			new = copyObject(old)
			applyPatch(new, nil, randomDoc(r, 2), time.Time{}, 0)
		}
		p := diff(old, new)
		got := copyObject(old)
		applyPatch(got, &Metadata{}, p, time.Time{}, 1)
		if !reflect.DeepEqual(got, new) {
			t.Fatalf("case %d:\nold   %v\nnew   %v\npatch %v\ngot   %v", i, old, new, p, got)
		}
		if d := diff(new, new); len(d) != 0 {
			t.Fatalf("diff of a document with itself = %v", d)
		}
	}
}

// TestGoValues: Go numbers are accepted and kept as json.Number; values
// JSON cannot carry are refused.
func TestGoValues(t *testing.T) {
	ok := map[string]any{"i": 3, "i64": int64(-4), "u8": uint8(5), "f": 1.5, "f32": float32(0.25), "n": json.Number("7e2")}
	if err := validate(SectionReported, ok); err != nil {
		t.Fatalf("valid Go values refused: %v", err)
	}
	got := copyObject(ok)
	want := map[string]any{"i": json.Number("3"), "i64": json.Number("-4"), "u8": json.Number("5"), "f": json.Number("1.5"), "f32": json.Number("0.25"), "n": json.Number("7e2")}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stored as %#v, want %#v", got, want)
	}
	for name, v := range map[string]any{
		"NaN":            math.NaN(),
		"Inf":            math.Inf(1),
		"bad Number":     json.Number("12abc"),
		"empty Number":   json.Number(""),
		"two Numbers":    json.Number("1 2"),
		"unsupported Go": struct{}{},
		"map of strings": map[string]string{"a": "b"},
	} {
		if err := validate(SectionDesired, map[string]any{"x": v}); !errors.Is(err, ErrInvalidPatch) {
			t.Errorf("%s: %v, want ErrInvalidPatch", name, err)
		}
	}
}

// FuzzPatch feeds arbitrary bytes through parsing, validation, merging
// and the size check: never a panic, and an accepted patch leaves a
// document that encodes.
func FuzzPatch(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":{"b":null}}`, `{"a":[1,{"b":2}]}`, `{"a.b":1}`, `[1]`, `{"a":"\u0000"}`, `{"a":1e999}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseObject(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidPatch) {
				t.Fatalf("ParseObject error not ErrInvalidPatch: %v", err)
			}
			return
		}
		if err := validate(SectionReported, p); err != nil {
			return
		}
		tw := NewTwin(ID{DeviceID: "d"}, "g")
		if err := applyReported(&tw, p, time.Unix(0, 0)); err != nil && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrInvalidPatch) {
			t.Fatalf("applyReported: %v", err)
		}
		if _, err := encodeRecord(tw); err != nil {
			t.Fatalf("an accepted patch left a twin that does not encode: %v", err)
		}
	})
}
