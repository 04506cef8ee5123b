package methods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/internal/hub"
)

// Direct methods across nodes.
//
// A device's request link lives on one node, while the service's REST call
// may reach any node. The node holding an identity's request links
// subscribes, for as long as it has one, to
//
//	<prefix>.methods.<device token>.<module token or "_">
//
// in a queue group, so that an identity connected to two nodes at once (a
// reconnect overlapping the old connection) is called once. A node that
// has no local link sends the call as a NATS request there; the holder
// runs it on its link as a local call with no connect timeout and replies
// with the status and payload, or with the kind of error, which the caller
// maps back to the same sentinel errors, so the REST answer does not
// depend on the node reached. "No responders" (or a holder whose link went
// away meanwhile) means not online: the caller retries until its connect
// timeout, waking early when the identity attaches locally.

// Retry and margin of calls sent to other nodes.
const (
	// remotePoll is how often a caller asks again while no node holds
	// the identity's link within the connect timeout.
	remotePoll = 100 * time.Millisecond
	// remoteMargin is added to the response timeout for the NATS request:
	// the holder answers within the response timeout plus its own work.
	remoteMargin = 2 * time.Second
	// queueGroup makes one holder take each call.
	queueGroup = "methods"
)

// Error kinds of the reply envelope.
const (
	kindNotOnline = "not-online"
	kindTimeout   = "timeout"
	kindClosed    = "closed"
	kindBad       = "bad-response"
	kindInvalid   = "invalid"
	kindTooLarge  = "too-large"
	kindInternal  = "internal"
)

var kindErrors = map[string]error{
	kindNotOnline: ErrDeviceNotOnline,
	kindTimeout:   ErrTimeout,
	kindClosed:    ErrConnectionClosed,
	kindBad:       ErrBadResponse,
	kindInvalid:   ErrInvalidRequest,
	kindTooLarge:  ErrPayloadTooLarge,
}

// remoteRequest is a call sent to the node holding the identity's link.
type remoteRequest struct {
	Method string `json:"m"`
	// Payload is the JSON payload as the service sent it (absent: null),
	// as bytes rather than embedded JSON so that it reaches the device
	// unchanged (embedding would compact it).
	Payload []byte `json:"p,omitempty"`
	// TimeoutMS is the response timeout in milliseconds.
	TimeoutMS int64 `json:"t"`
}

// remoteReply is the holder's answer: a response, or an error kind with
// the holder's message.
type remoteReply struct {
	Status  int    `json:"s,omitempty"`
	Payload []byte `json:"p,omitempty"`
	Kind    string `json:"k,omitempty"`
	Message string `json:"e,omitempty"`
}

// remoteError is an error that happened on the holder: its message as the
// holder wrote it, matching the sentinel of its kind.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// clusterState is an endpoint's cluster side.
type clusterState struct {
	c *hub.Cluster

	ctx    context.Context // cancelled by Close: calls run for other nodes end
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// subs is guarded by Endpoint.mu, which orders subscribe and
	// unsubscribe with the links' attach and detach.
	subs   map[key]*nats.Subscription
	closed bool
}

// SetCluster makes the endpoint serve and route calls across the nodes of
// c. Call it before the endpoint serves links; Close undoes it.
func (e *Endpoint) SetCluster(c *hub.Cluster) {
	ctx, cancel := context.WithCancel(context.Background())
	e.cluster = &clusterState{c: c, ctx: ctx, cancel: cancel, subs: map[key]*nats.Subscription{}}
}

// Close stops answering other nodes' calls and waits for the calls in
// progress for them. Without a cluster there is nothing to release.
func (e *Endpoint) Close() error {
	cs := e.cluster
	if cs == nil {
		return nil
	}
	e.mu.Lock()
	cs.closed = true
	var errs []error
	for k, sub := range cs.subs {
		if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, fmt.Errorf("methods: unsubscribe %s: %w", k, err))
		}
		delete(cs.subs, k)
	}
	e.mu.Unlock()
	cs.cancel()
	cs.wg.Wait()
	return errors.Join(errs...)
}

func (cs *clusterState) subject(k key) string {
	return cs.c.Subject("methods", hub.IdentityTokens(k.device, k.module))
}

// subscribeLocked starts answering calls for k. Caller holds e.mu. The
// subscription is only buffered here (no round trip to NATS), so the
// connection's reader goroutine does not block on NATS.
func (cs *clusterState) subscribeLocked(e *Endpoint, k key) {
	if cs.closed || cs.subs[k] != nil {
		return
	}
	sub, err := cs.c.Conn.QueueSubscribe(cs.subject(k), queueGroup, func(m *nats.Msg) { e.serveRemote(k, m) })
	if err != nil {
		// The link still serves calls made on this node.
		e.log.Error("methods: cannot take calls from other nodes", "device", k.String(), "err", err)
		return
	}
	cs.subs[k] = sub
}

// unsubscribeLocked stops answering calls for k. Caller holds e.mu.
func (cs *clusterState) unsubscribeLocked(e *Endpoint, k key) {
	sub := cs.subs[k]
	if sub == nil {
		return
	}
	delete(cs.subs, k)
	if err := sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		e.log.Info("methods: unsubscribe", "device", k.String(), "err", err)
	}
}

// serveRemote runs another node's call on the local link. It runs on the
// subscription's goroutine, so the call itself goes to its own goroutine:
// calls to one identity must not queue behind each other.
func (e *Endpoint) serveRemote(k key, m *nats.Msg) {
	cs := e.cluster
	var rr remoteRequest
	if err := json.Unmarshal(m.Data, &rr); err != nil {
		e.log.Info("methods: undecodable call from another node", "device", k.String(), "err", err)
		e.reply(m, remoteReply{Kind: kindInternal, Message: "undecodable method call envelope"})
		return
	}
	e.mu.Lock()
	closed := cs.closed
	if !closed {
		cs.wg.Add(1)
	}
	e.mu.Unlock()
	if closed {
		e.reply(m, remoteReply{Kind: kindNotOnline, Message: ErrDeviceNotOnline.Error()})
		return
	}
	go func() {
		defer cs.wg.Done()
		req := Request{
			DeviceID:        k.device,
			ModuleID:        k.module,
			MethodName:      rr.Method,
			Payload:         rr.Payload,
			ResponseTimeout: time.Duration(rr.TimeoutMS) * time.Millisecond,
		}
		// The caller's node validated with its configuration; validate
		// again with ours, as this node sends to the device.
		var rep remoteReply
		if err := e.validate(&req); err != nil {
			rep = replyFor(err)
		} else if l, err := e.target(cs.ctx, k, 0); err != nil {
			rep = replyFor(fmt.Errorf("method %s on %s: %w", req.MethodName, k, err))
		} else if resp, err := e.callLink(cs.ctx, req, k, l); err != nil {
			rep = replyFor(err)
		} else {
			rep = remoteReply{Status: resp.Status, Payload: resp.Payload}
		}
		e.reply(m, rep)
	}()
}

// replyFor encodes an error of a local call.
func replyFor(err error) remoteReply {
	for kind, sentinel := range kindErrors {
		if errors.Is(err, sentinel) {
			return remoteReply{Kind: kind, Message: err.Error()}
		}
	}
	// Cancelled by Close: the node is going away with the link.
	if errors.Is(err, context.Canceled) {
		return remoteReply{Kind: kindClosed, Message: ErrConnectionClosed.Error()}
	}
	return remoteReply{Kind: kindInternal, Message: err.Error()}
}

func (e *Endpoint) reply(m *nats.Msg, rep remoteReply) {
	b, err := json.Marshal(rep)
	if err == nil {
		err = m.Respond(b)
	}
	if err != nil {
		e.log.Info("methods: replying to another node's call", "err", err)
	}
}

// invokeClustered calls k on its local link, or on the node that holds
// one, waiting up to the connect timeout for some node to hold one.
func (e *Endpoint) invokeClustered(ctx context.Context, req Request, k key) (Response, error) {
	deadline := time.Now().Add(req.ConnectTimeout)
	for {
		if l, err := e.target(ctx, k, 0); err == nil {
			return e.callLink(ctx, req, k, l)
		}
		resp, err := e.callRemote(ctx, req, k)
		if !errors.Is(err, ErrDeviceNotOnline) {
			return resp, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, ErrDeviceNotOnline)
		}
		// Wake at the next poll, or at once when the identity attaches
		// here.
		l, err := e.target(ctx, k, min(left, remotePoll))
		switch {
		case err == nil:
			return e.callLink(ctx, req, k, l)
		case !errors.Is(err, ErrDeviceNotOnline):
			return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, err)
		}
	}
}

// callRemote sends the call to the node holding k's link. An error wraps
// ErrDeviceNotOnline when no node holds one.
func (e *Endpoint) callRemote(ctx context.Context, req Request, k key) (Response, error) {
	body, err := json.Marshal(remoteRequest{Method: req.MethodName, Payload: req.Payload, TimeoutMS: req.ResponseTimeout.Milliseconds()})
	if err != nil {
		return Response{}, fmt.Errorf("method %s on %s: encode: %w", req.MethodName, k, err)
	}
	rctx, cancel := context.WithTimeout(ctx, req.ResponseTimeout+remoteMargin)
	defer cancel()
	m, err := e.cluster.c.Conn.RequestWithContext(rctx, e.cluster.subject(k), body)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, ErrDeviceNotOnline)
	case err != nil && ctx.Err() != nil:
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, ctx.Err())
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		// The holding node did not answer in time: it may have died with
		// the link. For the service that is a device that did not answer.
		return Response{}, fmt.Errorf("method %s on %s: %w", req.MethodName, k, ErrTimeout)
	case err != nil:
		return Response{}, fmt.Errorf("method %s on %s: forward to the device's node: %w", req.MethodName, k, err)
	}
	var rep remoteReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return Response{}, fmt.Errorf("method %s on %s: undecodable reply from the device's node: %w", req.MethodName, k, err)
	}
	if rep.Kind != "" {
		if sentinel := kindErrors[rep.Kind]; sentinel != nil {
			return Response{}, &remoteError{msg: rep.Message, kind: sentinel}
		}
		return Response{}, fmt.Errorf("method %s on %s: the device's node failed: %s", req.MethodName, k, rep.Message)
	}
	payload := rep.Payload
	if len(payload) == 0 {
		payload = []byte("null")
	}
	if len(payload) > e.cfg.MaxPayloadBytes {
		return Response{}, fmt.Errorf("method %s on %s: %w: a payload of %d bytes, the limit is %d", req.MethodName, k, ErrBadResponse, len(payload), e.cfg.MaxPayloadBytes)
	}
	return Response{Status: rep.Status, Payload: payload}, nil
}
