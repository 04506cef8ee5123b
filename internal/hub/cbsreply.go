package hub

import (
	"context"
	"sync/atomic"
	"time"

	"amqphub/amqp"
)

// maxPendingCBSReplies bounds, per connection, the CBS replies waiting for
// the client to grant credit on its reply link. Requests are settled at
// once (that is what the SDKs expect), so without a bound a client that
// floods put-token while granting no reply credit would make the hub hold
// one reply and one goroutine per request for the full wait. SDKs grant
// credit before their first request, so a real client never has more than
// a few replies waiting.
const maxPendingCBSReplies = 16

const cbsPendingKey = "hub.cbs.pending"

// cbsPending counts a connection's CBS replies waiting for credit.
type cbsPending struct {
	n      atomic.Int32
	warned atomic.Bool // the drop was logged (once per connection)
}

// sendCBSReplyLater sends a reply that found no credit from a goroutine,
// unless too many already wait; then the reply is dropped (the client's
// request times out, which is what withholding credit asks for).
func (cs *ConnState) sendCBSReplyLater(rl *amqp.Link, out *amqp.Outgoing) {
	cs.mu.Lock()
	if cs.values == nil {
		cs.values = map[string]any{}
	}
	p, _ := cs.values[cbsPendingKey].(*cbsPending)
	if p == nil {
		p = &cbsPending{}
		cs.values[cbsPendingKey] = p
	}
	cs.mu.Unlock()
	if p.n.Add(1) > maxPendingCBSReplies {
		p.n.Add(-1)
		if p.warned.CompareAndSwap(false, true) {
			cs.hub.log.Info("hub: dropping CBS replies: the client grants its reply link no credit", "remote", cs.conn.RemoteAddr().String(), "waiting", maxPendingCBSReplies)
		}
		return
	}
	go func() {
		defer p.n.Add(-1)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		rl.Send(ctx, out)
	}()
}
