package twins

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"
)

// ParseObject decodes a JSON object as the store keeps JSON: numbers stay
// json.Number so that 64-bit integers and decimals round-trip exactly.
// Anything but one JSON object fails with ErrInvalidPatch.
func ParseObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the body is empty", ErrInvalidPatch)
		}
		return nil, fmt.Errorf("%w: not valid JSON: %v", ErrInvalidPatch, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: extra data after the JSON value", ErrInvalidPatch)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: expected a JSON object, got %s", ErrInvalidPatch, jsonKind(v))
	}
	return m, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// validate checks keys, depth and strings of a section's patch (nulls
// allowed: they remove) or document (nulls allowed too: they are dropped).
func validate(sec Section, m map[string]any) error {
	return validateObject(sec, m, "", 0)
}

func validateObject(sec Section, m map[string]any, path string, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: %s %s nests deeper than %d levels", ErrInvalidPatch, sec, where(path), MaxDepth)
	}
	for k, v := range m {
		if err := validKey(k); err != nil {
			return fmt.Errorf("%w: %s %s: %v", ErrInvalidPatch, sec, where(join(path, k)), err)
		}
		if err := validateValue(sec, v, join(path, k), depth); err != nil {
			return err
		}
	}
	return nil
}

func validateValue(sec Section, v any, path string, depth int) error {
	switch v := v.(type) {
	case nil, bool:
		return nil
	case json.Number:
		if !validNumber(v) {
			return fmt.Errorf("%w: %s %s: %q is not a JSON number", ErrInvalidPatch, sec, where(path), string(v))
		}
		return nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %s %s: %v is not a JSON number", ErrInvalidPatch, sec, where(path), v)
		}
		return nil
	case float32:
		return validateValue(sec, float64(v), path, depth)
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return nil
	case string:
		if len(v) > MaxStringBytes {
			return fmt.Errorf("%w: %s %s: a string of %d bytes, the limit is %d", ErrInvalidPatch, sec, where(path), len(v), MaxStringBytes)
		}
		return nil
	case map[string]any:
		return validateObject(sec, v, path, depth+1)
	case []any:
		if depth+1 > MaxDepth {
			return fmt.Errorf("%w: %s %s nests deeper than %d levels", ErrInvalidPatch, sec, where(path), MaxDepth)
		}
		for i, e := range v {
			if err := validateValue(sec, e, fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("%w: %s %s: unsupported value of type %T", ErrInvalidPatch, sec, where(path), v)
}

func validKey(k string) error {
	if k == "" {
		return errors.New("empty property name")
	}
	if len(k) > MaxKeyBytes {
		return fmt.Errorf("property name of %d bytes, the limit is %d", len(k), MaxKeyBytes)
	}
	if !utf8.ValidString(k) {
		return errors.New("property name is not valid UTF-8")
	}
	for _, r := range k {
		if r == '.' || r == '$' || r == ' ' || unicode.IsControl(r) {
			return fmt.Errorf("property name contains %q (not allowed: '.', '$', space, control characters)", r)
		}
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func where(path string) string {
	if path == "" {
		return "(root)"
	}
	return "at " + path
}

// sectionSize is the section's size as IoT Hub counts it: characters of
// its compact JSON.
func sectionSize(m map[string]any) (int, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInvalidPatch, err)
	}
	return utf8.RuneCount(bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})), nil
}

func checkSize(sec Section, m map[string]any, limit int) error {
	n, err := sectionSize(m)
	if err != nil {
		return err
	}
	if n > limit {
		return &LimitError{Section: sec, Size: n, Limit: limit}
	}
	return nil
}

// applyPatch merges patch into dst (RFC 7386) and records the update time
// and version in meta (which may be nil, for tags). It returns nothing:
// patches are validated before.
func applyPatch(dst map[string]any, meta *Metadata, patch map[string]any, now time.Time, version int64) {
	if meta != nil {
		meta.LastUpdated, meta.LastUpdatedVersion = now, version
	}
	for k, pv := range patch {
		switch pv := pv.(type) {
		case nil:
			delete(dst, k)
			if meta != nil {
				delete(meta.Children, k)
			}
		case map[string]any:
			sub, ok := dst[k].(map[string]any)
			var subMeta *Metadata
			if meta != nil {
				subMeta = meta.child(k)
			}
			if !ok {
				sub = map[string]any{}
				dst[k] = sub
				if subMeta != nil {
					subMeta.Children = nil
				}
			}
			applyPatch(sub, subMeta, pv, now, version)
		default:
			dst[k] = deepCopy(pv)
			if meta != nil {
				m := meta.child(k)
				m.LastUpdated, m.LastUpdatedVersion, m.Children = now, version, nil
			}
		}
	}
}

func (m *Metadata) child(k string) *Metadata {
	if m.Children == nil {
		m.Children = map[string]*Metadata{}
	}
	c := m.Children[k]
	if c == nil {
		c = &Metadata{}
		m.Children[k] = c
	}
	return c
}

// dropNulls returns doc without null-valued properties, at every level:
// in a whole document (a replace) a null means absent.
func dropNulls(doc map[string]any) map[string]any {
	out := make(map[string]any, len(doc))
	for k, v := range doc {
		switch v := v.(type) {
		case nil:
		case map[string]any:
			out[k] = dropNulls(v)
		default:
			out[k] = v
		}
	}
	return out
}

// diff returns the merge patch that turns old into new (new has no nulls).
func diff(old, new map[string]any) map[string]any {
	p := map[string]any{}
	for k := range old {
		if _, ok := new[k]; !ok {
			p[k] = nil
		}
	}
	for k, nv := range new {
		ov, had := old[k]
		if had && reflect.DeepEqual(ov, nv) {
			continue
		}
		om, oObj := ov.(map[string]any)
		nm, nObj := nv.(map[string]any)
		if had && oObj && nObj {
			if sub := diff(om, nm); len(sub) > 0 {
				p[k] = sub
			}
			continue
		}
		p[k] = deepCopy(nv)
	}
	return p
}

// validNumber reports whether n is one JSON number (json.Number values
// built by callers are not checked by anyone else).
func validNumber(n json.Number) bool {
	s := string(n)
	return s != "" && (s[0] == '-' || '0' <= s[0] && s[0] <= '9') && json.Valid([]byte(s))
}

// deepCopy copies decoded JSON so that callers never share maps or slices
// with the store. Go numbers become json.Number, the form the store keeps.
func deepCopy(v any) any {
	switch v := v.(type) {
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return json.Number(fmt.Sprint(v))
	case float32:
		return json.Number(strconv.FormatFloat(float64(v), 'g', -1, 32))
	case float64:
		return json.Number(strconv.FormatFloat(v, 'g', -1, 64))
	case map[string]any:
		return copyObject(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = deepCopy(e)
		}
		return out
	}
	return v
}

func copyObject(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = deepCopy(v)
	}
	return out
}

// Copy returns a deep copy of the metadata.
func (m *Metadata) Copy() *Metadata {
	if m == nil {
		return nil
	}
	out := &Metadata{LastUpdated: m.LastUpdated, LastUpdatedVersion: m.LastUpdatedVersion}
	if m.Children != nil {
		out.Children = make(map[string]*Metadata, len(m.Children))
		for k, c := range m.Children {
			out.Children[k] = c.Copy()
		}
	}
	return out
}

// JSON renders the metadata as IoT Hub's "$metadata" object:
// {"$lastUpdated": "...", "$lastUpdatedVersion": n, "<name>": {...}}.
// LastUpdatedVersion appears only when set (desired properties).
func (m *Metadata) JSON() map[string]any {
	if m == nil {
		return map[string]any{"$lastUpdated": time.Time{}.Format(time.RFC3339Nano)}
	}
	out := make(map[string]any, len(m.Children)+2)
	out["$lastUpdated"] = m.LastUpdated.UTC().Format(time.RFC3339Nano)
	if m.LastUpdatedVersion > 0 {
		out["$lastUpdatedVersion"] = m.LastUpdatedVersion
	}
	for k, c := range m.Children {
		out[k] = c.JSON()
	}
	return out
}

// Document returns the section as IoT Hub shows it: the properties plus
// "$version", and "$metadata" when withMetadata is set. The result shares
// nothing with p.
func (p Properties) Document(withMetadata bool) map[string]any {
	out := copyObject(p.Values)
	if out == nil {
		out = map[string]any{}
	}
	out["$version"] = p.Version
	if withMetadata {
		out["$metadata"] = p.Metadata.JSON()
	}
	return out
}

// StripReserved returns doc without the top-level "$version" and
// "$metadata" keys a twin read back from the service carries, so that a
// twin document can be sent back as it was received.
func StripReserved(doc map[string]any) map[string]any {
	if doc == nil {
		return nil
	}
	out := make(map[string]any, len(doc))
	for k, v := range doc {
		if k == "$version" || k == "$metadata" {
			continue
		}
		out[k] = v
	}
	return out
}
