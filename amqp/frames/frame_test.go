package frames

import (
	"bytes"
	"errors"
	"testing"
)

func TestProtocolHeaders(t *testing.T) {
	// Part 2, 2.2: "AMQP" %d0 major minor revision; SASL is protocol id 3, TLS 2.
	for name, tc := range map[string]struct{ got, want [8]byte }{
		"amqp": {ProtoAMQP, [8]byte{0x41, 0x4d, 0x51, 0x50, 0, 1, 0, 0}},
		"tls":  {ProtoTLS, [8]byte{0x41, 0x4d, 0x51, 0x50, 2, 1, 0, 0}},
		"sasl": {ProtoSASL, [8]byte{0x41, 0x4d, 0x51, 0x50, 3, 1, 0, 0}},
	} {
		if tc.got != tc.want {
			t.Errorf("%s header % x, want % x", name, tc.got, tc.want)
		}
	}
}

func TestParseFrameHeader(t *testing.T) {
	const max = 65536
	tests := []struct {
		name    string
		in      string
		want    FrameHeader
		wantErr bool
		tooBig  bool
	}{
		{"empty (heartbeat) frame", "00 00 00 08 02 00 00 00", FrameHeader{Size: 8, DataOff: 2, Type: FrameAMQP}, false, false},
		{"amqp frame on channel 258", "00 00 01 00 02 00 01 02", FrameHeader{Size: 256, DataOff: 2, Type: FrameAMQP, Channel: 258}, false, false},
		{"sasl frame", "00 00 00 10 02 01 00 00", FrameHeader{Size: 16, DataOff: 2, Type: FrameSASL}, false, false},
		{"extended header", "00 00 00 10 04 00 00 00", FrameHeader{Size: 16, DataOff: 4, Type: FrameAMQP}, false, false},
		{"exactly max", "00 01 00 00 02 00 00 00", FrameHeader{Size: max, DataOff: 2}, false, false},
		{"short header", "00 00 00 08 02 00 00", FrameHeader{}, true, false},
		{"no bytes", "", FrameHeader{}, true, false},
		{"size 0", "00 00 00 00 02 00 00 00", FrameHeader{}, true, false},
		{"size 7", "00 00 00 07 02 00 00 00", FrameHeader{}, true, false},
		{"size above max", "00 01 00 01 02 00 00 00", FrameHeader{}, true, true},
		{"size 4 GiB", "ff ff ff ff 02 00 00 00", FrameHeader{}, true, true},
		{"doff 0", "00 00 00 08 00 00 00 00", FrameHeader{}, true, false},
		{"doff 1", "00 00 00 08 01 00 00 00", FrameHeader{}, true, false},
		{"doff beyond frame", "00 00 00 0c 04 00 00 00", FrameHeader{}, true, false},
		{"doff 255", "00 00 01 00 ff 00 00 00", FrameHeader{}, true, false},
		{"unknown type 2", "00 00 00 08 02 02 00 00", FrameHeader{}, true, false},
		{"unknown type ff", "00 00 00 08 02 ff 00 00", FrameHeader{}, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseFrameHeader(hx(t, tc.in), max)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want error", h)
				}
				if errors.Is(err, ErrFrameTooLarge) != tc.tooBig {
					t.Fatalf("err %v: ErrFrameTooLarge=%v, want %v", err, !tc.tooBig, tc.tooBig)
				}
				return
			}
			if err != nil || h != tc.want {
				t.Fatalf("got %+v, %v; want %+v", h, err, tc.want)
			}
		})
	}
}

func TestAppendFrame(t *testing.T) {
	// Heartbeat: an empty AMQP frame.
	got, err := AppendFrame(nil, FrameAMQP, 0, nil, nil)
	if err != nil || !bytes.Equal(got, hx(t, "00 00 00 08 02 00 00 00")) {
		t.Fatalf("empty frame % x, %v", got, err)
	}
	// A transfer with its payload on channel 5, appended after existing bytes.
	tr := &Transfer{Handle: 1}
	payload := hx(t, "00 53 75 a0 02 68 69")
	got, err = AppendFrame([]byte{0xaa}, FrameAMQP, 5, tr, payload)
	want := hx(t, "aa "+frame(FrameAMQP, 5, described(0x14, list8("52 01"))+" 00 53 75 a0 02 68 69"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("transfer frame\n got % x\nwant % x (%v)", got, want, err)
	}
	// The SASL outcome frame, as a server sends it.
	got, err = AppendFrame(nil, FrameSASL, 0, &SASLOutcome{Result: SASLOK}, nil)
	if want := hx(t, "00 00 00 10 02 01 00 00 00 53 44 c0 03 01 50 00"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("sasl outcome\n got % x\nwant % x", got, want)
	}
	// An encoding error leaves the buffer as it was.
	bad := &Open{ContainerID: "c", Properties: map[any]any{"k": struct{}{}}}
	got, err = AppendFrame([]byte{1, 2}, FrameAMQP, 0, bad, nil)
	if err == nil || !bytes.Equal(got, []byte{1, 2}) {
		t.Fatalf("failed encode returned % x, %v", got, err)
	}
}

// A stream of frames parses back frame by frame.
func TestFrameStream(t *testing.T) {
	var buf []byte
	perfs := []Performative{
		&Open{ContainerID: "x", MaxFrameSize: 512, ChannelMax: 1},
		&Begin{IncomingWindow: 1, OutgoingWindow: 1, HandleMax: 4},
		&Transfer{Handle: 0, DeliveryID: 0, HasDeliveryID: true, DeliveryTag: []byte{0}, Settled: true},
		&Close{},
	}
	for i, p := range perfs {
		var payload []byte
		if _, ok := p.(*Transfer); ok {
			payload = []byte{0x00, 0x53, 0x75, 0xa0, 0x00}
		}
		var err error
		if buf, err = AppendFrame(buf, FrameAMQP, uint16(i), p, payload); err != nil {
			t.Fatal(err)
		}
	}
	var d Decoder
	for i := range perfs {
		h, err := ParseFrameHeader(buf, 512)
		if err != nil {
			t.Fatal(err)
		}
		if h.Channel != uint16(i) {
			t.Fatalf("frame %d on channel %d", i, h.Channel)
		}
		p, err := d.Decode(buf[int(h.DataOff)*4 : h.Size])
		if err != nil || p.Code() != perfs[i].Code() {
			t.Fatalf("frame %d: %T %v", i, p, err)
		}
		buf = buf[h.Size:]
	}
	if len(buf) != 0 {
		t.Fatalf("%d bytes left", len(buf))
	}
}
