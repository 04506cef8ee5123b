package jsc2d

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func sampleQ() *qval {
	return &qval{
		ID: "dev/modules/m1", Seq: 300, FSeq: 12,
		Msgs: []hdr{
			{Seq: 299, Body: 0, MsgID: "a", DevID: "dev", GenID: "g1", Ack: 3, Enq: 1, Exp: -5, DC: 2, Tok: []byte{1, 2, 3}, Until: 1 << 60, Data: []byte("hello")},
			{Seq: 300, Body: 77, MsgID: "b", DevID: "dev", GenID: "g1"},
		},
		Fb: []fbrec{
			{FSeq: 11, Rev: 5, MsgID: "x", DevID: "dev", GenID: "g0", St: 1, At: 10, Exp: 20, N: 3, Tok: []byte{9}, Until: 30, Node: "A"},
			{FSeq: 12},
		},
		Retired: [][]byte{{4, 5}, {6}},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	jsonV, err := json.Marshal(sampleQ())
	if err != nil {
		t.Fatal(err)
	}
	binV, err := encodeQ(sampleQ())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"binary", binV},
		{"json of earlier versions", jsonV},
		{"empty queue", mustEncode(t, &qval{ID: "q"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeQ(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			want := sampleQ()
			if tc.name == "empty queue" {
				want = &qval{ID: "q"}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

func mustEncode(t *testing.T, v *qval) []byte {
	t.Helper()
	b, err := encodeQ(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCodecRejectsDamage(t *testing.T) {
	b := mustEncode(t, sampleQ())
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown format", []byte{0x7f, 1, 2}},
		{"trailing bytes", append(append([]byte(nil), b...), 0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeQ(tc.data); err == nil {
				t.Error("decoded without error")
			}
		})
	}
	for n := 1; n < len(b); n++ {
		if _, err := decodeQ(b[:n]); err == nil {
			t.Fatalf("a value cut to %d of %d bytes decoded without error", n, len(b))
		}
	}
}

// FuzzDecodeQueue: any stored value decodes to an error or to a queue that
// encodes and decodes again to itself; it never panics or allocates without
// bound (counts are checked against the bytes left).
func FuzzDecodeQueue(f *testing.F) {
	bin, err := encodeQ(sampleQ())
	if err != nil {
		f.Fatal(err)
	}
	js, err := json.Marshal(sampleQ())
	if err != nil {
		f.Fatal(err)
	}
	empty, err := encodeQ(&qval{ID: "q"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(bin)
	f.Add(js)
	f.Add(empty)
	f.Add(bin[:len(bin)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeQ(data)
		if err != nil {
			return
		}
		again, err := encodeQ(v)
		if err != nil {
			t.Fatalf("a decoded value does not encode: %v", err)
		}
		w, err := decodeQ(again)
		if err != nil {
			t.Fatalf("re-encoded value does not decode: %v", err)
		}
		// The binary form is canonical: a second round trip is the same.
		third, err := encodeQ(w)
		if err != nil || !bytes.Equal(again, third) {
			t.Fatalf("round trip changed the value (%v):\n%+v\n%+v", err, v, w)
		}
	})
}
