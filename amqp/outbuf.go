package amqp

import (
	"sync"
	"time"

	"amqphub/amqp/frames"
)

// Output path. Frames are encoded straight into a connection's outBuf, a
// list of fixed-size chunks, under Conn.wmu. A flusher goroutine exists
// only while there is output: the first frame queued on an idle
// connection starts one; it writes everything queued (several chunks in
// one writev on TCP), repeats while more arrives, and exits when the queue
// is empty. An idle connection therefore holds neither a writer goroutine
// nor an output buffer, and a busy one never copies its output to grow a
// buffer. Heartbeats come from a timer that queues an empty frame when the
// line has been quiet for the heartbeat interval.

// outChunkSize is the size of output chunks: two TLS records, and large
// enough that a busy connection writes many frames per chunk.
const outChunkSize = 32 << 10

// frameEstimate is room reserved for a frame header and performative
// when choosing whether a frame fits the current chunk; a frame that
// turns out larger simply grows that chunk.
const frameEstimate = 256

var chunkPool = sync.Pool{New: func() any { return new([outChunkSize]byte) }}

// outBuf is the queue of encoded frames of one connection.
type outBuf struct {
	chunks [][]byte
	n      int // bytes queued
}

// appendFrame encodes a frame at the end of the queue.
func (o *outBuf) appendFrame(typ byte, ch uint16, p frames.Performative, payload []byte) error {
	cur := o.room(frameEstimate + len(payload))
	b, err := frames.AppendFrame(cur, typ, ch, p, payload)
	if err != nil {
		return err
	}
	o.n += len(b) - len(cur)
	o.chunks[len(o.chunks)-1] = b
	return nil
}

// appendRaw queues bytes as they are (an empty heartbeat frame).
func (o *outBuf) appendRaw(p []byte) {
	cur := o.room(len(p))
	o.chunks[len(o.chunks)-1] = append(cur, p...)
	o.n += len(p)
}

// room returns the last chunk, after starting a new one if fewer than
// need bytes are free in it.
func (o *outBuf) room(need int) []byte {
	if k := len(o.chunks); k > 0 {
		if cur := o.chunks[k-1]; cap(cur)-len(cur) >= need {
			return cur
		}
	}
	var cur []byte
	if need <= outChunkSize {
		cur = chunkPool.Get().(*[outChunkSize]byte)[:0]
	} else {
		cur = make([]byte, 0, need)
	}
	o.chunks = append(o.chunks, cur)
	return cur
}

// take moves the queued chunks to the end of dst and empties o.
func (o *outBuf) take(dst [][]byte) [][]byte {
	dst = append(dst, o.chunks...)
	clear(o.chunks)
	o.chunks = o.chunks[:0]
	o.n = 0
	return dst
}

// recycle returns written chunks to the pool and clears bufs.
func recycle(bufs [][]byte) {
	for i, b := range bufs {
		if cap(b) == outChunkSize {
			chunkPool.Put((*[outChunkSize]byte)(b[:outChunkSize]))
		}
		bufs[i] = nil
	}
}

// kickLocked starts a flusher if there is output (or a shutdown to carry
// out) and none is running. Caller holds wmu.
func (c *Conn) kickLocked() {
	if c.flushing || !c.writerAlive {
		return
	}
	if c.out.n == 0 && !c.pending.active && !c.shutdown {
		return
	}
	c.flushing = true
	go c.flush()
}

// flush writes queued output until none is left, then exits. Only one
// flusher runs at a time (Conn.flushing), so the fields it alone uses
// (wq, wiov, deadline) need no lock of their own.
func (c *Conn) flush() {
	for {
		c.wmu.Lock()
		c.flushPendingLocked()
		if c.out.n == 0 || c.werr != nil {
			shutdown := c.shutdown || c.werr != nil
			c.flushing = false
			c.wcond.Broadcast()
			c.wmu.Unlock()
			if shutdown {
				c.endWrites()
			}
			return
		}
		c.wq = c.out.take(c.wq[:0])
		c.wcond.Broadcast() // the reader may be waiting for room
		c.wmu.Unlock()

		err := c.writeChunks(c.wq)
		c.lastWrite.Store(time.Now().UnixNano())
		recycle(c.wq)
		if err != nil {
			c.wmu.Lock()
			c.werr = err
			c.flushing = false
			c.wcond.Broadcast()
			c.wmu.Unlock()
			c.nc.Close()
			c.endWrites()
			return
		}
	}
}

// writeChunks writes bufs: one writev on a TCP connection, one write per
// chunk on TLS and WebSocket connections (which have no vectored write).
func (c *Conn) writeChunks(bufs [][]byte) error {
	// A 30 s (or idle-timeout) bound on each write; re-arming it costs a
	// timer update, so it is moved at most once a second.
	timeout := max(c.cfg.IdleTimeout, 30*time.Second)
	if now := time.Now(); c.deadline.Sub(now) < timeout-time.Second {
		c.deadline = now.Add(timeout)
		c.nc.SetWriteDeadline(c.deadline)
	}
	if len(bufs) == 1 {
		_, err := c.nc.Write(bufs[0])
		return err
	}
	// WriteTo consumes the slice it is given; keep bufs for recycling.
	c.wiov = append(c.wiov[:0], bufs...)
	_, err := c.wiov.WriteTo(c.nc)
	clear(c.wiov[:cap(c.wiov)])
	return err
}

// endWrites finishes the write side once: the socket closes (the peer has
// everything queued before the shutdown) and wexited tells teardown.
func (c *Conn) endWrites() {
	c.endOnce.Do(func() {
		c.nc.Close()
		close(c.wexited)
	})
}

// startHeartbeat arms the heartbeat timer once the connection is open.
func (c *Conn) startHeartbeat() {
	c.lastWrite.Store(time.Now().UnixNano())
	// Armed only once assigned: heartbeatTick reads c.hbTimer.
	c.hbTimer = time.AfterFunc(time.Hour, c.heartbeatTick)
	c.hbTimer.Reset(c.heartbeat)
}

// heartbeatTick queues an empty frame if nothing was written for a
// heartbeat interval, and re-arms the timer for the next due time. Writes
// do not touch the timer: that would cost a timer update per write.
func (c *Conn) heartbeatTick() {
	quiet := time.Since(time.Unix(0, c.lastWrite.Load()))
	if rest := c.heartbeat - quiet; rest > 0 {
		c.hbTimer.Reset(rest)
		return
	}
	c.wmu.Lock()
	if c.shutdown || c.werr != nil {
		c.wmu.Unlock()
		return
	}
	if c.out.n == 0 && !c.pending.active {
		c.out.appendRaw(emptyFrame[:])
	}
	c.kickLocked()
	c.wmu.Unlock()
	c.hbTimer.Reset(c.heartbeat)
}

var emptyFrame = [8]byte{0, 0, 0, 8, 2, 0, 0, 0}
