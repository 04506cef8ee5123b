package jsc2d

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
)

// Queue values are written in a compact binary form: every node decodes
// every write of every queue, and JSON's reflection-driven decoding was
// most of a node's CPU under load. The first byte tells the forms apart:
// codecV1 for this one, '{' for JSON values written by earlier versions,
// which are still read.
//
// Layout (uvarint unless noted; strings and byte slices are a uvarint
// length and the bytes; times are varints):
//
//	value:  codecV1 id seq fseq len(msgs) hdr* len(fb) fbrec* len(retired) bytes*
//	hdr:    seq body msgID devID genID ack(byte) enq exp dc tok until data
//	fbrec:  fseq rev msgID devID genID st(byte) at exp n tok until node
const codecV1 = 0x01

func encodeQ(v *qval) ([]byte, error) {
	b := make([]byte, 0, 64+len(v.Msgs)*96+len(v.Fb)*80)
	b = append(b, codecV1)
	b = appendStr(b, v.ID)
	b = binary.AppendUvarint(b, v.Seq)
	b = binary.AppendUvarint(b, v.FSeq)
	b = binary.AppendUvarint(b, uint64(len(v.Msgs)))
	for i := range v.Msgs {
		h := &v.Msgs[i]
		b = binary.AppendUvarint(b, h.Seq)
		b = binary.AppendUvarint(b, h.Body)
		b = appendStr(b, h.MsgID)
		b = appendStr(b, h.DevID)
		b = appendStr(b, h.GenID)
		b = append(b, h.Ack)
		b = binary.AppendVarint(b, h.Enq)
		b = binary.AppendVarint(b, h.Exp)
		b = binary.AppendUvarint(b, uint64(h.DC))
		b = appendBytes(b, h.Tok)
		b = binary.AppendVarint(b, h.Until)
		b = appendBytes(b, h.Data)
	}
	b = binary.AppendUvarint(b, uint64(len(v.Fb)))
	for i := range v.Fb {
		f := &v.Fb[i]
		if f.N < 0 {
			return nil, fmt.Errorf("encode queue %q: feedback record %d: negative delivery count", v.ID, f.FSeq)
		}
		b = binary.AppendUvarint(b, f.FSeq)
		b = binary.AppendUvarint(b, f.Rev)
		b = appendStr(b, f.MsgID)
		b = appendStr(b, f.DevID)
		b = appendStr(b, f.GenID)
		b = append(b, f.St)
		b = binary.AppendVarint(b, f.At)
		b = binary.AppendVarint(b, f.Exp)
		b = binary.AppendUvarint(b, uint64(f.N))
		b = appendBytes(b, f.Tok)
		b = binary.AppendVarint(b, f.Until)
		b = appendStr(b, f.Node)
	}
	b = binary.AppendUvarint(b, uint64(len(v.Retired)))
	for _, r := range v.Retired {
		b = appendBytes(b, r)
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, p []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p)))
	return append(b, p...)
}

func decodeQ(b []byte) (*qval, error) {
	v := new(qval)
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, v); err != nil {
			return nil, fmt.Errorf("decode queue value: %w", err)
		}
		return v, nil
	}
	if len(b) == 0 || b[0] != codecV1 {
		return nil, errors.New("decode queue value: unknown format")
	}
	// One copy for the tokens and bodies to point into: the value outlives
	// the message it came in.
	r := reader{b: bytes.Clone(b[1:])}
	v.ID = r.str()
	v.Seq = r.uvarint()
	v.FSeq = r.uvarint()
	if n := r.count(); n > 0 {
		v.Msgs = make([]hdr, n)
		for i := range v.Msgs {
			h := &v.Msgs[i]
			h.Seq = r.uvarint()
			h.Body = r.uvarint()
			h.MsgID = r.str()
			h.DevID = r.strLike(prevDev(v.Msgs, i))
			h.GenID = r.strLike(prevGen(v.Msgs, i))
			h.Ack = r.byte()
			h.Enq = r.varint()
			h.Exp = r.varint()
			h.DC = uint32(r.uvarint())
			h.Tok = r.bytes()
			h.Until = r.varint()
			h.Data = r.bytes()
		}
	}
	if n := r.count(); n > 0 {
		v.Fb = make([]fbrec, n)
		for i := range v.Fb {
			f := &v.Fb[i]
			f.FSeq = r.uvarint()
			f.Rev = r.uvarint()
			f.MsgID = r.str()
			f.DevID = r.str()
			f.GenID = r.str()
			f.St = r.byte()
			f.At = r.varint()
			f.Exp = r.varint()
			f.N = int(r.uvarint())
			f.Tok = r.bytes()
			f.Until = r.varint()
			f.Node = r.str()
		}
	}
	if n := r.count(); n > 0 {
		v.Retired = make([][]byte, n)
		for i := range v.Retired {
			v.Retired[i] = r.bytes()
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("decode queue value: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("decode queue value: %d trailing bytes", len(r.b))
	}
	return v, nil
}

// prevDev and prevGen let consecutive headers share their device and
// generation id strings (a queue's messages usually carry the same).
func prevDev(m []hdr, i int) string {
	if i == 0 {
		return ""
	}
	return m[i-1].DevID
}

func prevGen(m []hdr, i int) string {
	if i == 0 {
		return ""
	}
	return m[i-1].GenID
}

var errShort = errors.New("truncated")

// reader decodes the binary form; the first error sticks and later reads
// return zero values.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) uvarint() uint64 {
	x, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errShort)
		return 0
	}
	r.b = r.b[n:]
	return x
}

func (r *reader) varint() int64 {
	x, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail(errShort)
		return 0
	}
	r.b = r.b[n:]
	return x
}

func (r *reader) byte() byte {
	if len(r.b) == 0 {
		r.fail(errShort)
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// count reads a length that must fit in what is left (every element takes
// at least one byte), so a corrupt value cannot make a huge allocation.
func (r *reader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail(errShort)
		return 0
	}
	return int(n)
}

func (r *reader) raw() []byte {
	n := r.count()
	p := r.b[:n:n]
	r.b = r.b[n:]
	return p
}

func (r *reader) str() string { return string(r.raw()) }

// strLike is str, returning prev itself when equal, without allocating.
func (r *reader) strLike(prev string) string {
	p := r.raw()
	if string(p) == prev {
		return prev
	}
	return string(p)
}

// bytes returns nil when empty; otherwise a slice of the value's own copy
// of the buffer (tokens and bodies are replaced, never written in place).
func (r *reader) bytes() []byte {
	p := r.raw()
	if len(p) == 0 {
		return nil
	}
	return p
}
