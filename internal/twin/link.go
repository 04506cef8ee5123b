package twin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
	"amqphub/store/twins"
)

// Annotation keys and values of the twin protocol.
const (
	annOperation = encoding.Symbol("operation")
	annResource  = encoding.Symbol("resource")
	annStatus    = encoding.Symbol("status")
	annVersion   = encoding.Symbol("version")

	resourceReported = "/properties/reported"
	resourceDesired  = "/notifications/twin/properties/desired"
)

// connStateKey is where a connection's twin channels live in hub.ConnState.
const connStateKey = "twin.channels"

// connChannels are the twin channels of one connection, one per twin.
type connChannels struct {
	mu sync.Mutex
	m  map[twins.ID]*channel
}

// channel is one twin's traffic on one connection: the device's request
// links, the hub's response links (the newest one is used) and the queue
// of messages for it.
//
// Lock order: channel.mu → Endpoint.mu. Endpoint.mu is never held while
// taking a channel's lock, and no lock is held across Send or store calls.
type channel struct {
	ep *Endpoint
	id twins.ID
	cc *connChannels

	mu         sync.Mutex
	links      int          // attached links of either direction
	replies    []*amqp.Link // hub-sending links, newest last
	out        []*amqp.Outgoing
	sending    bool
	reqs       []*amqp.Delivery
	working    bool
	subscribed bool
	// lastPushed is the desired $version of the newest push queued; a GET
	// response older than it is read again so it cannot undo the push.
	lastPushed int64
}

// Attach implements hub.Endpoint. It runs on the connection's reader
// goroutine, which serializes the attaches of one connection.
func (e *Endpoint) Attach(req *hub.AttachRequest) *amqp.Error {
	id := twins.ID{DeviceID: req.Route.DeviceID, ModuleID: req.Route.ModuleID}
	cc, _ := req.Conn.Get(connStateKey).(*connChannels)
	if cc == nil {
		cc = &connChannels{m: map[twins.ID]*channel{}}
		req.Conn.Set(connStateKey, cc)
	}
	cc.mu.Lock()
	ch := cc.m[id]
	if ch == nil {
		ch = &channel{ep: e, id: id, cc: cc}
		cc.m[id] = ch
	}
	ch.mu.Lock()
	ch.links++
	ch.mu.Unlock()
	cc.mu.Unlock()

	l := req.Link
	if l.IsSender() {
		ch.addReply(l)
	} else {
		l.SetCreditWindow(e.cfg.RequestCredit)
		l.SetMaxMessageSize(maxRequestBytes)
		l.OnMessage(ch.request)
	}
	// Done rather than OnDetach: it fires even if the engine drops the
	// link before the attach completes.
	go func() {
		<-l.Done()
		ch.linkGone(l)
	}()
	return nil
}

func (ch *channel) addReply(l *amqp.Link) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.replies = append(ch.replies, l)
	ch.kickLocked()
}

// linkGone forgets a link; the channel ends with its last link.
func (ch *channel) linkGone(l *amqp.Link) {
	ch.mu.Lock()
	for i, r := range ch.replies {
		if r == l {
			ch.replies = append(ch.replies[:i], ch.replies[i+1:]...)
			break
		}
	}
	ch.links--
	last := ch.links == 0
	if last {
		if ch.subscribed {
			ch.ep.unsubscribe(ch)
		}
		ch.subscribed = false
		ch.out = nil
	}
	ch.mu.Unlock()
	if !last {
		return
	}
	// A link of the same twin may have attached meanwhile and revived
	// the channel: check again in the attach's lock order.
	ch.cc.mu.Lock()
	ch.mu.Lock()
	if ch.links == 0 && ch.cc.m[ch.id] == ch {
		delete(ch.cc.m, ch.id)
	}
	ch.mu.Unlock()
	ch.cc.mu.Unlock()
}

// request queues a device request for the channel's worker. It runs on
// the reader goroutine; the delivery is settled once handled, which is
// what returns its credit.
func (ch *channel) request(d *amqp.Delivery) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.reqs = append(ch.reqs, d)
	if !ch.working {
		ch.working = true
		go ch.work()
	}
}

// work handles queued requests in order, then exits.
func (ch *channel) work() {
	for {
		ch.mu.Lock()
		if len(ch.reqs) == 0 {
			ch.working = false
			ch.mu.Unlock()
			return
		}
		d := ch.reqs[0]
		ch.reqs = ch.reqs[1:]
		ch.mu.Unlock()
		ch.handle(d)
	}
}

// reply is the outcome of one request.
type reply struct {
	status  int
	version int64 // sent when > 0
	body    []byte
	// refuse, when set, rejects an unsettled request delivery with it
	// instead of answering: the hub could not carry the request out at
	// all. A pre-settled request (the SDKs' way) gets the reply instead.
	refuse *amqp.Error
}

// operationTimeout bounds the store and registry work of one request.
const operationTimeout = 30 * time.Second

func (ch *channel) handle(d *amqp.Delivery) {
	m, err := d.Message()
	if err != nil {
		ch.ep.log.Info("twin: undecodable request", "id", ch.id.String(), "err", err)
		d.Reject(amqp.NewError(amqp.ErrCondDecodeError, "the twin request is not a valid AMQP message: "+err.Error()))
		return
	}
	// Settled only once answered: the credit window then bounds the
	// requests a device can have queued here.
	defer d.Accept()
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	op := strings.ToUpper(annotationString(m.Annotations, annOperation))
	resource := annotationString(m.Annotations, annResource)
	ctx, cancel := context.WithTimeout(context.Background(), operationTimeout)
	defer cancel()

	if op == "GET" {
		// Queued by getTwin itself, in order with pushes.
		ch.getTwin(ctx, corr)
		return
	}
	var r reply
	switch {
	case op == "PATCH" && resource == resourceReported:
		r = ch.patchReported(ctx, m)
	case op == "PUT" && resource == resourceDesired:
		r = ch.setSubscribed(ctx, true)
	case op == "DELETE" && resource == resourceDesired:
		r = ch.setSubscribed(ctx, false)
	case op == "":
		r = errorReply(http.StatusBadRequest, 400004, "the twin request has no operation annotation")
	default:
		r = errorReply(http.StatusBadRequest, 400004, fmt.Sprintf("twin operation %q on resource %q is not supported", op, resource))
	}
	if r.refuse != nil && !d.Settled {
		// The deferred Accept does nothing after this.
		d.Reject(r.refuse)
		return
	}
	ch.enqueue(responseMessage(corr, r))
}

func annotationString(ann map[any]any, key encoding.Symbol) string {
	v, ok := ann[key]
	if !ok {
		v = ann[string(key)]
	}
	switch s := v.(type) {
	case string:
		return s
	case encoding.Symbol:
		return string(s)
	}
	return ""
}

// body returns the JSON body of a request: its data sections or an
// amqp-value string or binary.
func body(m *frames.Message) []byte {
	switch {
	case len(m.Data) == 1:
		return m.Data[0]
	case len(m.Data) > 1:
		var b []byte
		for _, d := range m.Data {
			b = append(b, d...)
		}
		return b
	}
	switch v := m.Value.(type) {
	case string:
		return []byte(v)
	case []byte:
		return v
	}
	return nil
}

func (ch *channel) getTwin(ctx context.Context, corr any) {
	// A push queued after the read but before the response would be
	// undone by the older response: read again (rarely more than once).
	for attempt := 0; ; attempt++ {
		gen, err := ch.ep.generation(ctx, ch.id)
		if err != nil {
			ch.enqueue(responseMessage(corr, ch.ep.failure(ch.id, err)))
			return
		}
		t, err := ch.ep.store.Get(ctx, ch.id, gen)
		if err != nil {
			ch.enqueue(responseMessage(corr, ch.ep.failure(ch.id, err)))
			return
		}
		doc, err := json.Marshal(map[string]any{
			"desired":  t.Desired.Document(false),
			"reported": t.Reported.Document(false),
		})
		if err != nil {
			ch.enqueue(responseMessage(corr, ch.ep.failure(ch.id, fmt.Errorf("encode twin: %w", err))))
			return
		}
		ch.mu.Lock()
		if t.Desired.Version < ch.lastPushed && attempt < 5 {
			ch.mu.Unlock()
			continue
		}
		ch.enqueueLocked(responseMessage(corr, reply{status: http.StatusOK, body: doc}))
		ch.mu.Unlock()
		return
	}
}

func (ch *channel) patchReported(ctx context.Context, m *frames.Message) reply {
	patch, err := twins.ParseObject(body(m))
	if err != nil {
		return errorReply(http.StatusBadRequest, 400004, "reported properties patch: "+err.Error())
	}
	gen, err := ch.ep.generation(ctx, ch.id)
	if err != nil {
		return ch.ep.failure(ch.id, err)
	}
	t, err := ch.ep.store.PatchReported(ctx, ch.id, gen, patch)
	if err != nil {
		return ch.ep.failure(ch.id, err)
	}
	return reply{status: http.StatusNoContent, version: t.Reported.Version}
}

func (ch *channel) setSubscribed(ctx context.Context, on bool) reply {
	if _, err := ch.ep.generation(ctx, ch.id); err != nil {
		return ch.ep.failure(ch.id, err)
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.subscribed != on && ch.links > 0 {
		ch.subscribed = on
		if on {
			ch.ep.subscribe(ch)
		} else {
			ch.ep.unsubscribe(ch)
		}
	}
	return reply{status: http.StatusOK}
}

// failure maps a store or registry error to a response.
func (e *Endpoint) failure(id twins.ID, err error) reply {
	switch {
	case errors.Is(err, registry.ErrDeviceNotFound):
		return errorReply(http.StatusNotFound, 404001, err.Error())
	case errors.Is(err, registry.ErrModuleNotFound):
		return errorReply(http.StatusNotFound, 404010, err.Error())
	case errors.Is(err, twins.ErrInvalidPatch):
		return errorReply(http.StatusBadRequest, 400004, err.Error())
	case errors.Is(err, twins.ErrTooLarge):
		return errorReply(http.StatusRequestEntityTooLarge, 413001, err.Error())
	case errors.Is(err, twins.ErrClosed), errors.Is(err, registry.ErrClosed):
		return errorReply(http.StatusServiceUnavailable, 503001, "the hub is shutting down")
	case errors.Is(err, pebbleutil.ErrNoSpace):
		// The store's guard logged the outage once; the device learns
		// the cause, as amqp:internal-error or, on a pre-settled request,
		// as 503 (ServiceUnavailable, which the SDKs retry).
		const msg = "the hub could not store the twin: it is out of disk space (insufficient disk space); retry later"
		r := errorReply(http.StatusServiceUnavailable, 503001, msg)
		r.refuse = amqp.NewError(amqp.ErrCondInternalError, msg)
		return r
	}
	e.log.Error("twin: request failed", "id", id.String(), "err", err)
	return errorReply(http.StatusInternalServerError, 500001, "internal error")
}

// errorReply is an error response: IoT Hub's numeric code and a message.
func errorReply(status, code int, msg string) reply {
	b, _ := json.Marshal(struct {
		ErrorCode int    `json:"errorCode"`
		Message   string `json:"message"`
	}{code, msg})
	return reply{status: status, body: b}
}

// responseMessage builds a response. Keys of message annotations are
// symbols; status is an int and version a long, the types the C SDK checks.
func responseMessage(corr any, r reply) *frames.Message {
	ann := map[any]any{annStatus: int32(r.status)}
	if r.version > 0 {
		ann[annVersion] = r.version
	}
	m := &frames.Message{Annotations: ann}
	if corr != nil {
		m.Properties = &frames.Properties{CorrelationID: corr}
	}
	if r.body != nil {
		m.Data = [][]byte{r.body}
	}
	return m
}

// pushMessage builds a desired-property push: no correlation-id, the
// version annotation, and the patch with "$version" as body.
func pushMessage(c twins.DesiredChange) (*frames.Message, error) {
	doc := make(map[string]any, len(c.Patch)+1)
	for k, v := range c.Patch {
		doc[k] = v
	}
	doc["$version"] = c.Version
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return &frames.Message{
		Annotations: map[any]any{annVersion: c.Version},
		Data:        [][]byte{b},
	}, nil
}

// notify queues a desired-property push if the channel is subscribed.
func (ch *channel) notify(c twins.DesiredChange) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if !ch.subscribed {
		return
	}
	m, err := pushMessage(c)
	if err != nil {
		ch.ep.log.Error("twin: encoding a desired-property push", "id", ch.id.String(), "err", err)
		return
	}
	ch.lastPushed = max(ch.lastPushed, c.Version)
	ch.enqueueLocked(m)
}

func (ch *channel) enqueue(m *frames.Message) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.enqueueLocked(m)
}

// enqueueLocked queues a message for the response link (pre-settled, as
// the SDKs ask); a device that lets MaxPendingMessages pile up loses its
// response link.
func (ch *channel) enqueueLocked(m *frames.Message) {
	if ch.links == 0 {
		return
	}
	payload, err := m.AppendAMQP(nil)
	if err != nil {
		ch.ep.log.Error("twin: encoding a message", "id", ch.id.String(), "err", err)
		return
	}
	out := &amqp.Outgoing{Payload: payload, Settled: true}
	if len(ch.out) >= ch.ep.cfg.MaxPendingMessages {
		ch.ep.log.Warn("twin: device does not take its twin messages; detaching its response link", "id", ch.id.String(), "pending", len(ch.out))
		ch.out = nil
		for _, l := range ch.replies {
			l.Close(amqp.NewError(amqp.ErrCondResourceLimitExceeded,
				fmt.Sprintf("more than %d twin responses and notifications are waiting for credit; re-attach and get the twin", ch.ep.cfg.MaxPendingMessages)))
		}
		return
	}
	ch.out = append(ch.out, out)
	ch.kickLocked()
}

// kickLocked starts the sender if there is something to send and a link
// to send it on.
func (ch *channel) kickLocked() {
	if !ch.sending && len(ch.out) > 0 && len(ch.replies) > 0 {
		ch.sending = true
		go ch.drain()
	}
}

// drain sends queued messages on the newest response link, waiting for
// credit; it exits when the queue is empty or the link is gone.
func (ch *channel) drain() {
	for {
		ch.mu.Lock()
		if len(ch.out) == 0 || len(ch.replies) == 0 {
			ch.sending = false
			ch.mu.Unlock()
			return
		}
		out, l := ch.out[0], ch.replies[len(ch.replies)-1]
		ch.mu.Unlock()
		// Send returns when the link, its session or connection goes.
		err := l.Send(context.Background(), out)
		ch.mu.Lock()
		if len(ch.out) > 0 && ch.out[0] == out {
			ch.out = ch.out[1:]
		}
		if err != nil && !errors.Is(err, amqp.ErrLinkClosed) {
			ch.ep.log.Warn("twin: sending on the response link", "id", ch.id.String(), "err", err)
		}
		ch.mu.Unlock()
	}
}
