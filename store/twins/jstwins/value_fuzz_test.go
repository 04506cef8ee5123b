package jstwins

import (
	"bytes"
	"testing"
	"time"

	"amqphub/store/twins"
)

// FuzzDecodeValue: any bucket value decodes to an error or to a twin and
// patch that encode to a value decoding to the same again; never a panic.
func FuzzDecodeValue(f *testing.F) {
	id := twins.ID{DeviceID: "d1"}
	tw := twins.NewTwin(id, "g1")
	tw.Desired.Values["fan"] = "on"
	tw.Desired.Metadata.LastUpdated = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, patch := range [][]byte{nil, []byte(`{"fan":"on"}`)} {
		v, err := encodeValue(tw, 2, patch)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(v)
		f.Add(v[:len(v)/2])
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decodeValue(id, data)
		if err != nil {
			return
		}
		_, _ = s.decodePatch() // may fail on a bad patch, must not panic
		again, err := encodeValue(s.twin, s.patchVer, s.patchJSON)
		if err != nil {
			return // a decoded twin may still break a limit the encoder checks
		}
		s2, err := decodeValue(id, again)
		if err != nil {
			t.Fatalf("a re-encoded value does not decode: %v", err)
		}
		third, err := encodeValue(s2.twin, s2.patchVer, s2.patchJSON)
		if err != nil || !bytes.Equal(again, third) {
			t.Fatalf("round trip changed the value (%v)", err)
		}
	})
}
