package encoding

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// FuzzReadAny decodes arbitrary bytes. It must never panic; Skip must agree
// with ReadAny on where a value ends; and every value ReadAny accepts must
// re-encode, decode to the same value, and re-encode to the same bytes.
func FuzzReadAny(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(data)
		v, err := r.ReadAny()
		s := NewReader(data)
		serr := s.Skip()
		if err != nil {
			return
		}
		if serr != nil || s.Pos() != r.Pos() {
			t.Fatalf("ReadAny consumed %d bytes but Skip consumed %d (err %v)", r.Pos(), s.Pos(), serr)
		}
		enc, err := AppendAny(nil, v)
		if err != nil {
			t.Fatalf("decoded %#v but cannot re-encode it: %v", v, err)
		}
		r2 := NewReader(enc)
		v2, err := r2.ReadAny()
		if err != nil {
			t.Fatalf("re-encoded % x does not decode: %v", enc, err)
		}
		if r2.Len() != 0 {
			t.Fatalf("re-encoding left %d trailing bytes", r2.Len())
		}
		if !sameValue(v, v2) {
			t.Fatalf("round trip changed the value\nfirst  %#v\nsecond %#v", v, v2)
		}
		enc2, err := AppendAny(nil, v2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable: % x then % x (%v)", enc, enc2, err)
		}
	})
}

// seedCorpus returns the seeds committed under testdata/fuzz/FuzzReadAny:
// every spec vector of the decoder tests, the encodings of the round-trip
// values, and malformed inputs that exercise each error path.
func seedCorpus(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	for _, tc := range decodeVectors {
		seeds["vector-"+tc.name] = hx(t, tc.in)
	}
	vals := []any{
		[]any{uint32(1), "x", []any{[]any{}}, map[any]any{Symbol("k"): int64(-200)}},
		map[any]any{nil: 1.5, BinaryKey("b"): Char('c'), UUID{1}: time.UnixMilli(123456789).UTC()},
		Array{Elements: []any{Array{Elements: []any{true}}, Array{Elements: []any{false, true}}}},
		Array{Descriptor: uint64(0x24), Elements: []any{&Described{uint64(0x24), []any{}}}},
		Array{Elements: []any{"a", strings.Repeat("z", 300)}},
		&Described{Symbol("apache.org:selector-filter:string"), "amqp.annotation.x-opt-sequence-number > 10"},
		strings.Repeat("long", 100),
	}
	for i, v := range vals {
		seeds[fmt.Sprintf("value-%d", i)] = mustAppend(t, v)
	}
	bad := map[string]string{
		"list8-size-larger": "c0 05 01 40 40 40 40",
		"list8-overrun":     "c0 02 01 a1 03 61 62 63",
		"map8-odd":          "c1 02 01 40",
		"map-key-list":      "c1 03 02 45 40",
		"array-zero-width":  "f0 00 00 00 05 00 01 00 01 40",
		"array-descr-null":  "e0 05 01 00 40 50 01",
		"array-huge-count":  "f0 00 00 00 07 ff ff ff ff 50 01 02",
		"vbin32-huge":       "b0 ff ff ff ff 00",
		"str8-bad-utf8":     "a1 02 c3 28",
		"boolean-2":         "56 02",
		"descriptor-string": "00 a1 01 78 40",
	}
	for name, in := range bad {
		seeds["bad-"+name] = hx(t, in)
	}
	seeds["deep-lists"] = nestedLists(40)
	seeds["deep-arrays"] = nestedArrays(40)
	return seeds
}

// TestFuzzSeedCorpus keeps the committed seed corpus in step with
// seedCorpus. Regenerate with: AMQP_WRITE_CORPUS=1 go test -run TestFuzzSeedCorpus ./amqp/encoding
func TestFuzzSeedCorpus(t *testing.T) {
	checkCorpus(t, "FuzzReadAny", seedCorpus(t))
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// checkCorpus writes (with AMQP_WRITE_CORPUS=1) or verifies the seed files
// of one fuzz target, in the format go test reads from testdata/fuzz.
func checkCorpus(t *testing.T, target string, seeds map[string][]byte) {
	dir := filepath.Join("testdata", "fuzz", target)
	write := os.Getenv("AMQP_WRITE_CORPUS") == "1"
	if write {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	names := make([]string, 0, len(seeds))
	for name := range seeds {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		file := filepath.Join(dir, "seed-"+unsafeName.ReplaceAllString(name, "_"))
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seeds[name])
		if write {
			if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil || string(got) != content {
			t.Errorf("seed %s is missing or stale (%v); regenerate with AMQP_WRITE_CORPUS=1", file, err)
		}
	}
}
