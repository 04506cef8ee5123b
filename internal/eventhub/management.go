package eventhub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/hub"
)

// Management request vocabulary.
const (
	typeEventHub  = "com.microsoft:eventhub"
	typePartition = "com.microsoft:partition"
	mgmtConnKey   = "eventhub.management"
)

// maxPendingReplies bounds, per connection, the $management replies
// waiting for the client to grant credit on its reply link, as the hub
// does for CBS: requests are settled at once, so without a bound a client
// that floods requests while granting no reply credit would make the hub
// hold one reply and one goroutine per request for the full wait. The
// SDKs grant credit before their first request.
const maxPendingReplies = 16

// mgmtConn tracks one connection's $management reply links.
type mgmtConn struct {
	mu    sync.Mutex
	links []*amqp.Link

	pending atomic.Int32 // replies waiting for credit
	warned  atomic.Bool  // a dropped reply was logged (once per connection)
}

func (mc *mgmtConn) add(l *amqp.Link) {
	mc.mu.Lock()
	mc.links = append(mc.links, l)
	mc.mu.Unlock()
}

func (mc *mgmtConn) remove(l *amqp.Link) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	for i, x := range mc.links {
		if x == l {
			mc.links = append(mc.links[:i], mc.links[i+1:]...)
			return
		}
	}
}

// replyLink finds where a reply goes: the reply link whose target address
// or name is reply-to, else the only one in the request's session, else
// any on the connection.
func (mc *mgmtConn) replyLink(req *amqp.Link, replyTo string) *amqp.Link {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if replyTo != "" {
		for _, l := range mc.links {
			if t := l.PeerAttach().Target; (t != nil && t.Address == replyTo) || l.Name() == replyTo {
				return l
			}
		}
	}
	var inSession, anyLink *amqp.Link
	for _, l := range mc.links {
		anyLink = l
		if l.Session() == req.Session() {
			inSession = l
		}
	}
	if inSession != nil {
		return inSession
	}
	return anyLink
}

// connState returns the connection's management state. Attaches of one
// connection run on its reader goroutine, so get-or-create needs no lock.
func connState(cs *hub.ConnState) *mgmtConn {
	if mc, ok := cs.Get(mgmtConnKey).(*mgmtConn); ok {
		return mc
	}
	mc := &mgmtConn{}
	cs.Set(mgmtConnKey, mc)
	return mc
}

// attachManagement accepts both directions of the $management node.
func (ep *endpoint) attachManagement(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	mc := connState(req.Conn)
	if l.IsSender() {
		// Replies go pre-settled; the SDKs ask for that explicitly.
		l.SetSenderSettleMode(frames.SenderSettleSettled)
		mc.add(l)
		go func() {
			<-l.Done()
			mc.remove(l)
		}()
		return nil
	}
	l.SetMaxMessageSize(64 << 10)
	l.SetCreditWindow(100)
	l.OnMessage(func(d *amqp.Delivery) { ep.onManagementRequest(mc, d) })
	return nil
}

// onManagementRequest settles a request and answers it on its reply link.
func (ep *endpoint) onManagementRequest(mc *mgmtConn, d *amqp.Delivery) {
	d.Accept()
	m, err := d.Message()
	if err != nil {
		ep.logger.Info("eventhub: undecodable $management request", "err", err)
		return
	}
	var msgID any
	replyTo := ""
	if m.Properties != nil {
		msgID, replyTo = m.Properties.MessageID, m.Properties.ReplyTo
	}
	status, desc, body := ep.handleManagement(m)
	props := map[string]any{
		// status-code must be an AMQP int: the Go SDK rejects other types.
		"status-code":        int32(status),
		"status-description": desc,
	}
	if cond := conditionForStatus(status); cond != "" {
		props["error-condition"] = cond
	}
	reply := &frames.Message{
		Properties:            &frames.Properties{CorrelationID: msgID},
		ApplicationProperties: props,
	}
	if body != nil {
		reply.Value, reply.HasValue = body, true
	}
	payload, err := reply.AppendAMQP(nil)
	if err != nil {
		ep.logger.Error("eventhub: encoding a $management reply", "err", err)
		return
	}
	rl := mc.replyLink(d.Link(), replyTo)
	if rl == nil {
		ep.logger.Info("eventhub: $management request with no reply link", "reply-to", replyTo)
		return
	}
	out := &amqp.Outgoing{Payload: payload, Settled: true}
	if err := rl.TrySend(out); errors.Is(err, amqp.ErrNoCredit) {
		ep.sendReplyLater(mc, rl, out)
	}
}

// sendReplyLater waits for reply credit off the connection's reader
// goroutine, unless too many replies already wait; then the reply is
// dropped (the client's request times out, which is what withholding
// credit asks for).
func (ep *endpoint) sendReplyLater(mc *mgmtConn, rl *amqp.Link, out *amqp.Outgoing) {
	if mc.pending.Add(1) > maxPendingReplies {
		mc.pending.Add(-1)
		if mc.warned.CompareAndSwap(false, true) {
			ep.logger.Info("eventhub: dropping $management replies: the client grants its reply link no credit", "waiting", maxPendingReplies)
		}
		return
	}
	go func() {
		defer mc.pending.Add(-1)
		ctx, cancel := context.WithTimeout(ep.ctx, 30*time.Second)
		defer cancel()
		rl.Send(ctx, out)
	}()
}

// conditionForStatus gives error replies the condition the Node SDK maps.
func conditionForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return string(amqp.ErrCondNotAllowed)
	case http.StatusUnauthorized:
		return string(amqp.ErrCondUnauthorizedAccess)
	case http.StatusNotFound:
		return string(amqp.ErrCondNotFound)
	case http.StatusInternalServerError:
		return string(amqp.ErrCondInternalError)
	}
	return ""
}

// handleManagement answers a READ request: status, description, body map.
func (ep *endpoint) handleManagement(m *frames.Message) (int, string, map[string]any) {
	props := m.ApplicationProperties
	op, _ := props["operation"].(string)
	if !strings.EqualFold(op, "READ") {
		return http.StatusBadRequest, fmt.Sprintf("unsupported operation %q: only READ is supported", op), nil
	}
	if status, desc := ep.checkSecurityToken(props["security_token"]); status != http.StatusOK {
		return status, desc, nil
	}
	typ, _ := props["type"].(string)
	name, _ := props["name"].(string)
	if !strings.EqualFold(name, ep.entity) {
		return http.StatusNotFound, fmt.Sprintf("the Event Hub %q does not exist; this endpoint serves %q", name, ep.entity), nil
	}
	switch typ {
	case typeEventHub:
		return http.StatusOK, "OK", map[string]any{
			"name":            ep.entity,
			"type":            typeEventHub,
			"created_at":      ep.groups.createdAt(),
			"partition_count": int32(ep.nparts),
			// A string array: the Go SDK rejects a list or symbols.
			"partition_ids": ep.partitionIDs(),
			// Required by the Go SDK; 1 means no geo-replication.
			"georeplication_factor": int32(1),
		}
	case typePartition:
		pid, _ := props["partition"].(string)
		part, ok := ep.partition(pid)
		if !ok {
			return http.StatusNotFound, fmt.Sprintf("partition %q does not exist: %s has partitions 0 to %d", pid, ep.entity, ep.nparts-1), nil
		}
		info, err := ep.log.Info(part)
		if err != nil {
			ep.logger.Error("eventhub: partition info", "partition", part, "err", err)
			return http.StatusInternalServerError, "the partition's properties cannot be read now", nil
		}
		return http.StatusOK, "OK", map[string]any{
			"name":                          ep.entity,
			"type":                          typePartition,
			"partition":                     pid,
			"begin_sequence_number":         info.BeginSeq,
			"last_enqueued_sequence_number": info.LastSeq,
			"last_enqueued_offset":          fmt.Sprint(info.LastOffset),
			"last_enqueued_time_utc":        time.UnixMilli(info.LastEnqueuedTime).UTC(),
			"is_partition_empty":            info.Empty,
		}
	}
	return http.StatusBadRequest, fmt.Sprintf("unsupported type %q: use %s or %s", typ, typeEventHub, typePartition), nil
}

// checkSecurityToken validates the request's security_token when there is
// one (the SDKs send a token for the entity). Without one the link's own
// authorization suffices.
func (ep *endpoint) checkSecurityToken(v any) (int, string) {
	token, ok := v.(string)
	if v == nil || ok && token == "" {
		return http.StatusOK, ""
	}
	if !ok {
		return http.StatusBadRequest, fmt.Sprintf("security_token must be a string, not %T", v)
	}
	a := ep.env.Authority
	if a == nil {
		return http.StatusOK, ""
	}
	ctx, cancel := context.WithTimeout(ep.ctx, 10*time.Second)
	defer cancel()
	now := time.Now()
	id, err := a.AuthenticateEventHubs(ctx, token, now)
	if err != nil {
		if iot, iotErr := a.Authenticate(ctx, token, now); iotErr == nil {
			id, err = iot, nil
		}
	}
	if err != nil {
		ep.logger.Info("eventhub: $management security_token refused", "reason", err)
		return http.StatusUnauthorized, "the security_token is invalid or expired"
	}
	if id.Kind != auth.KindPolicy || !id.Rights.Has(auth.ServiceConnect) {
		return http.StatusUnauthorized, "the security_token needs a policy with ServiceConnect"
	}
	if id.Path != "" && !id.Covers("/"+ep.entity) && !id.Covers("/"+ep.entity+"/$management") {
		return http.StatusUnauthorized, "the security_token's resource does not cover " + ep.entity
	}
	return http.StatusOK, ""
}
