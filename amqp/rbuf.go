package amqp

import (
	"io"
	"sync"
)

// Input path. A connection reads into a small buffer embedded in its
// Conn; only while data arrives faster than it is consumed (a read fills
// the buffer) does it borrow a large pooled buffer, so one read syscall
// brings in many frames. It gives the large buffer back as soon as
// everything read has been consumed and the last read did not fill it. An
// idle connection, the common case among many thousands, holds 512 bytes
// instead of a 4 KiB reader buffer plus a frame buffer. Frames are
// returned as slices of the buffer (no copy); they are valid until the
// next read, which is how the decoder and dispatch use them.

const (
	rbufSmall = 512
	rbufLarge = 64 << 10
)

var rbufPool = sync.Pool{New: func() any { return new([rbufLarge]byte) }}

// frameReader buffers a connection's input. Only the reader goroutine
// uses it.
type frameReader struct {
	src   io.Reader
	small [rbufSmall]byte
	buf   []byte // small[:], *large, or a one-off buffer for a huge frame
	large *[rbufLarge]byte
	r, w  int  // unread bytes are buf[r:w]
	full  bool // the last read filled the buffer: more is likely waiting
}

func (f *frameReader) init(src io.Reader) {
	f.src = src
	f.buf = f.small[:]
}

// next returns the next n bytes of input, valid until the next call.
func (f *frameReader) next(n int) ([]byte, error) {
	if f.w-f.r < n {
		if err := f.fill(n); err != nil {
			return nil, err
		}
	}
	b := f.buf[f.r : f.r+n : f.r+n]
	f.r += n
	return b, nil
}

// fill reads until at least n unread bytes are buffered.
func (f *frameReader) fill(n int) error {
	if f.r == f.w {
		f.r, f.w = 0, 0
		if !f.full {
			f.release()
		}
	}
	switch {
	case n > len(f.buf) || (f.full && len(f.buf) < rbufLarge):
		f.grow(max(n, rbufLarge))
	case len(f.buf)-f.r < n:
		f.w = copy(f.buf, f.buf[f.r:f.w])
		f.r = 0
	}
	for f.w-f.r < n {
		m, err := f.src.Read(f.buf[f.w:])
		f.w += m
		f.full = f.w == len(f.buf)
		if err != nil {
			if f.w-f.r >= n {
				return nil // the error shows again on the next read
			}
			if err == io.EOF && f.w > f.r {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// grow moves the unread bytes into a buffer of at least size bytes.
func (f *frameReader) grow(size int) {
	var nb []byte
	var large *[rbufLarge]byte
	if size <= rbufLarge {
		if f.large != nil {
			// Already large: just move the unread bytes to the front.
			f.w = copy(f.buf, f.buf[f.r:f.w])
			f.r = 0
			return
		}
		large = rbufPool.Get().(*[rbufLarge]byte)
		nb = large[:]
	} else {
		nb = make([]byte, size)
	}
	w := copy(nb, f.buf[f.r:f.w])
	f.release()
	f.buf, f.large, f.r, f.w = nb, large, 0, w
}

// release returns a borrowed buffer and falls back to the small one. The
// caller has moved or consumed the unread bytes.
func (f *frameReader) release() {
	if f.large != nil {
		rbufPool.Put(f.large)
		f.large = nil
	}
	f.buf = f.small[:]
}
