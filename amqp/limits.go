package amqp

import (
	"net"
	"sync"
	"time"

	"amqphub/amqp/frames"
)

// handshakes bounds connections that have not finished the protocol
// header, SASL and Open exchange, in total and per remote IP address.
// Such connections cost a goroutine and buffers while proving nothing, so
// a flood of them (or a slowloris holding them open until the handshake
// deadline) must not exhaust the process; the per-IP bound keeps one
// source from taking every slot from everyone else.
type handshakes struct {
	mu      sync.Mutex
	total   int
	perIP   map[string]int
	refused int64     // since the last warning
	warned  time.Time // when the last warning was logged
}

// ipKey is the remote IP of a connection ("" when it has none, e.g. an
// in-memory pipe, which then counts only towards the total).
func ipKey(a net.Addr) string {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.String()
	case nil:
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return ""
	}
	return host
}

// acquire takes a handshake slot for a connection from addr, or reports
// false if a bound is reached.
func (h *handshakes) acquire(cfg *Config, addr net.Addr) bool {
	ip := ipKey(addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total >= cfg.MaxHandshakes || (ip != "" && h.perIP[ip] >= cfg.MaxHandshakesPerIP) {
		h.refused++
		if now := time.Now(); now.Sub(h.warned) >= 10*time.Second {
			// One line per interval, not one per refused connection.
			cfg.Logger.Warn("amqp: too many connections in the handshake; refusing new ones",
				"inHandshake", h.total, "fromThisIP", h.perIP[ip], "ip", ip, "refused", h.refused,
				"maxHandshakes", cfg.MaxHandshakes, "maxHandshakesPerIP", cfg.MaxHandshakesPerIP)
			h.warned, h.refused = now, 0
		}
		return false
	}
	h.total++
	if ip != "" {
		if h.perIP == nil {
			h.perIP = make(map[string]int)
		}
		h.perIP[ip]++
	}
	return true
}

func (h *handshakes) release(addr net.Addr) {
	ip := ipKey(addr)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total--
	if ip != "" {
		if h.perIP[ip] <= 1 {
			delete(h.perIP, ip)
		} else {
			h.perIP[ip]--
		}
	}
}

// Handshaking returns the number of connections still in the handshake.
func (s *Server) Handshaking() int {
	s.hs.mu.Lock()
	defer s.hs.mu.Unlock()
	return s.hs.total
}

// limitedHandshake runs the handshake in the slot serveConn acquired and
// gives the slot back however the handshake ends.
func (c *Conn) limitedHandshake() error {
	defer c.srv.hs.release(c.nc.RemoteAddr())
	c.hdec = decoders.Get().(*frames.Decoder)
	defer func() { decoders.Put(c.hdec); c.hdec = nil }()
	return c.handshake()
}
