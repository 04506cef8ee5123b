package frames

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Frame types.
const (
	FrameAMQP byte = 0
	FrameSASL byte = 1
)

// HeaderSize is the fixed part of a frame header.
const HeaderSize = 8

// MinMaxFrameSize is the smallest max-frame-size a peer may negotiate.
const MinMaxFrameSize = 512

// Protocol headers: "AMQP" followed by protocol id, major, minor, revision.
var (
	ProtoAMQP = [8]byte{'A', 'M', 'Q', 'P', 0, 1, 0, 0}
	ProtoTLS  = [8]byte{'A', 'M', 'Q', 'P', 2, 1, 0, 0}
	ProtoSASL = [8]byte{'A', 'M', 'Q', 'P', 3, 1, 0, 0}
)

// ErrFrameTooLarge reports a frame larger than the negotiated maximum.
var ErrFrameTooLarge = errors.New("frames: frame exceeds max-frame-size")

// FrameHeader is a parsed frame header.
type FrameHeader struct {
	Size    uint32
	DataOff uint8
	Type    byte
	Channel uint16
}

// ParseFrameHeader parses the 8-byte frame header and validates it against
// maxSize, so a hostile size never drives an allocation.
func ParseFrameHeader(b []byte, maxSize uint32) (FrameHeader, error) {
	if len(b) < HeaderSize {
		return FrameHeader{}, fmt.Errorf("frames: short frame header")
	}
	h := FrameHeader{
		Size:    binary.BigEndian.Uint32(b),
		DataOff: b[4],
		Type:    b[5],
		Channel: binary.BigEndian.Uint16(b[6:]),
	}
	switch {
	case h.Size < HeaderSize:
		return h, fmt.Errorf("frames: frame size %d is below the header size", h.Size)
	case h.Size > maxSize:
		return h, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, h.Size, maxSize)
	case h.DataOff < 2 || uint32(h.DataOff)*4 > h.Size:
		return h, fmt.Errorf("frames: bad data offset %d for frame size %d", h.DataOff, h.Size)
	case h.Type != FrameAMQP && h.Type != FrameSASL:
		return h, fmt.Errorf("frames: unknown frame type %d", h.Type)
	}
	return h, nil
}

// AppendFrame appends a complete frame holding p (and payload, for
// transfers) and returns the extended slice.
func AppendFrame(b []byte, typ byte, channel uint16, p Performative, payload []byte) ([]byte, error) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 2, typ, byte(channel>>8), byte(channel))
	if p != nil {
		// AppendAMQP returns nil on error, so keep b to hand back unchanged.
		out, err := p.AppendAMQP(b)
		if err != nil {
			return b[:start], err
		}
		b = out
	}
	b = append(b, payload...)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start))
	return b, nil
}
