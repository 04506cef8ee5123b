package jstwins

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"amqphub/store/twins"
)

// valueVersion is the first byte of every value, so the format can change.
const valueVersion byte = 1

// keyPrefix starts every key of the bucket: t.<device> or t.<device>.<module>.
const keyPrefix = "t."

// token encodes an id as one key token. It is hub.SubjectToken's encoding
// (unpadded base64url: no '.', '*', '>' or spaces, which KV keys forbid),
// repeated here because the store layer does not import the hub.
func token(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

// keyOf returns the key of a twin.
func keyOf(id twins.ID) string {
	k := keyPrefix + token(id.DeviceID)
	if id.ModuleID != "" {
		k += "." + token(id.ModuleID)
	}
	return k
}

// deviceFilter matches the keys of every module twin of a device.
func deviceFilter(deviceID string) string { return keyPrefix + token(deviceID) + ".>" }

// idOf parses a key back into the twin's id.
func idOf(key string) (twins.ID, error) {
	rest, ok := strings.CutPrefix(key, keyPrefix)
	if !ok {
		return twins.ID{}, fmt.Errorf("key %q is not a twin key", key)
	}
	devTok, modTok, hasMod := strings.Cut(rest, ".")
	dev, err := base64.RawURLEncoding.DecodeString(devTok)
	if err != nil || len(dev) == 0 {
		return twins.ID{}, fmt.Errorf("key %q: bad device token", key)
	}
	id := twins.ID{DeviceID: string(dev)}
	if hasMod {
		mod, err := base64.RawURLEncoding.DecodeString(modTok)
		if err != nil || len(mod) == 0 {
			return twins.ID{}, fmt.Errorf("key %q: bad module token", key)
		}
		id.ModuleID = string(mod)
	}
	return id, nil
}

// stored is a decoded value: the twin plus the last desired patch and the
// desired version it produced, which let a node that saw the previous
// version announce the exact patch another node applied.
type stored struct {
	twin       twins.Twin
	patchVer   int64
	patchJSON  []byte // compact JSON of the last desired patch; nil if none
	patch      map[string]any
	patchKnown bool // patch is set (decoded or the writer's own)
}

// encodeValue returns the bucket value of a twin.
func encodeValue(t twins.Twin, patchVer int64, patchJSON []byte) ([]byte, error) {
	rec, err := twins.EncodeRecord(t)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(patchJSON)+len(rec))
	b = append(b, valueVersion)
	b = binary.AppendUvarint(b, uint64(patchVer))
	b = binary.AppendUvarint(b, uint64(len(patchJSON)))
	b = append(b, patchJSON...)
	return append(b, rec...), nil
}

// decodeValue decodes a bucket value; the patch is decoded later, and only
// when a change is announced (decodePatch).
func decodeValue(id twins.ID, b []byte) (stored, error) {
	if len(b) == 0 || b[0] != valueVersion {
		return stored{}, errors.New("stored value has an unknown format version")
	}
	b = b[1:]
	pv, n := binary.Uvarint(b)
	if n <= 0 {
		return stored{}, errors.New("stored value: bad patch version")
	}
	b = b[n:]
	pl, n := binary.Uvarint(b)
	if n <= 0 || pl > uint64(len(b)-n) {
		return stored{}, errors.New("stored value: bad patch length")
	}
	b = b[n:]
	s := stored{patchVer: int64(pv)}
	if pl > 0 {
		s.patchJSON = b[:pl]
	}
	t, err := twins.DecodeRecord(id, b[pl:])
	if err != nil {
		return stored{}, err
	}
	s.twin = t
	return s, nil
}

// decodePatch returns the stored desired patch.
func (s *stored) decodePatch() (map[string]any, error) {
	if s.patchKnown {
		return s.patch, nil
	}
	if s.patchJSON == nil {
		return nil, errors.New("no desired patch stored")
	}
	m, err := twins.ParseObject(s.patchJSON)
	if err != nil {
		return nil, fmt.Errorf("stored desired patch: %w", err)
	}
	s.patch, s.patchKnown = m, true
	return m, nil
}

// marshalPatch returns the compact JSON of a desired patch.
func marshalPatch(p map[string]any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}
