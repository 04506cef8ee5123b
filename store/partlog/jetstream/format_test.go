package jetstream

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

var streamTS = time.UnixMilli(1_700_000_000_123)

func streamTime() (time.Time, error) { return streamTS, nil }

func TestParseRecord(t *testing.T) {
	ours := putRecord(nil, 42, []byte("payload"))
	tests := []struct {
		name        string
		data        []byte
		wantTime    int64
		wantPayload []byte
	}{
		{"ours", ours, 42, []byte("payload")},
		{"ours, empty payload", putRecord(nil, 7, nil), 7, []byte{}},
		{"no prefix", []byte("plain"), streamTS.UnixMilli(), []byte("plain")},
		{"empty", nil, streamTS.UnixMilli(), nil},
		{"magic but short", []byte{recordMagic, 1, 2}, streamTS.UnixMilli(), []byte{recordMagic, 1, 2}},
		{"negative time", append([]byte{recordMagic, 0xFF, 0, 0, 0, 0, 0, 0, 0}, 'x'), streamTS.UnixMilli(),
			append([]byte{recordMagic, 0xFF, 0, 0, 0, 0, 0, 0, 0}, 'x')},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts, payload, err := parseRecord(tc.data, streamTime)
			if err != nil || ts != tc.wantTime || !bytes.Equal(payload, tc.wantPayload) {
				t.Fatalf("parseRecord(%x) = %d, %q, %v; want %d, %q", tc.data, ts, payload, err, tc.wantTime, tc.wantPayload)
			}
		})
	}
	bad := errors.New("no timestamp")
	if _, _, err := parseRecord([]byte("plain"), func() (time.Time, error) { return time.Time{}, bad }); !errors.Is(err, bad) {
		t.Fatalf("foreign message without a stream time: %v", err)
	}
}

// TestPutRecordReusesBuffer checks that the scratch buffer is overwritten,
// not appended to.
func TestPutRecordReusesBuffer(t *testing.T) {
	buf := putRecord(nil, 1, bytes.Repeat([]byte{'a'}, 100))
	buf = putRecord(buf, 2, []byte("b"))
	if ts, payload, _ := parseRecord(buf, streamTime); ts != 2 || string(payload) != "b" {
		t.Fatalf("reused buffer parses as %d, %q", ts, payload)
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add(putRecord(nil, 1_700_000_000_000, []byte("x")))
	f.Add([]byte{recordMagic})
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, payload, err := parseRecord(data, streamTime)
		if err != nil || ts < 0 || len(payload) > len(data) {
			t.Fatalf("parseRecord(%x) = %d, %d bytes, %v", data, ts, len(payload), err)
		}
		if len(payload) < len(data) {
			// Parsed as ours: it must round-trip.
			if again := putRecord(nil, ts, payload); !bytes.Equal(again, data) {
				t.Fatalf("%x re-encodes as %x", data, again)
			}
		}
	})
}
