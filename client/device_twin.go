package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	goamqp "github.com/Azure/go-amqp"
)

// TwinProperties are a twin's desired and reported properties, each with
// its "$version" (and, from the service API, "$metadata").
type TwinProperties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// DesiredVersion returns the desired properties' $version.
func (p *TwinProperties) DesiredVersion() int64 { return propsVersion(p.Desired) }

// ReportedVersion returns the reported properties' $version.
func (p *TwinProperties) ReportedVersion() int64 { return propsVersion(p.Reported) }

func propsVersion(m map[string]any) int64 {
	switch v := m["$version"].(type) {
	case json.Number:
		n, _ := v.Int64()
		return n
	case float64:
		return int64(v)
	}
	return 0
}

// DesiredUpdate is a change of the desired properties pushed by the hub.
type DesiredUpdate struct {
	// Patch is the JSON merge patch (a null value removes a property).
	Patch map[string]any
	// Version is the desired properties' new $version.
	Version int64
}

// Twin annotation keys and values of IoT Hub's twin protocol.
const (
	twinResourceReported = "/properties/reported"
	twinResourceDesired  = "/notifications/twin/properties/desired"
)

// GetTwin reads the device's twin properties.
func (d *DeviceClient) GetTwin(ctx context.Context) (*TwinProperties, error) {
	var out *TwinProperties
	err := d.do(ctx, "get twin", func(ctx context.Context, lc *liveConn) error {
		tc, err := d.twinChannel(ctx, lc)
		if err != nil {
			return err
		}
		resp, err := tc.request(ctx, "GET", "", nil)
		if err != nil {
			lc.note("twin", err)
			return fmt.Errorf("get twin: %w", err)
		}
		var p TwinProperties
		dec := json.NewDecoder(bytes.NewReader(resp.body))
		dec.UseNumber()
		if err := dec.Decode(&p); err != nil {
			return fmt.Errorf("get twin: the hub's answer is not a twin: %w", err)
		}
		out = &p
		return nil
	})
	return out, err
}

// UpdateReported merges patch into the reported properties (JSON merge
// patch: a nil value removes a property) and returns their new $version.
func (d *DeviceClient) UpdateReported(ctx context.Context, patch map[string]any) (int64, error) {
	body, err := json.Marshal(patch)
	if err != nil {
		return 0, fmt.Errorf("update reported properties: %w", err)
	}
	if patch == nil {
		return 0, errors.New("update reported properties: nil patch")
	}
	var version int64
	err = d.do(ctx, "update reported properties", func(ctx context.Context, lc *liveConn) error {
		tc, err := d.twinChannel(ctx, lc)
		if err != nil {
			return err
		}
		resp, err := tc.request(ctx, "PATCH", twinResourceReported, body)
		if err != nil {
			lc.note("twin", err)
			return fmt.Errorf("update reported properties: %w", err)
		}
		version = resp.version
		return nil
	})
	return version, err
}

// OnDesiredUpdate registers h to be called with every change of the
// desired properties, in order, on a goroutine of the client (h may call
// the client). It subscribes now and again after each reconnect; since
// changes made while disconnected are not replayed, read the twin
// (GetTwin) after registering. A nil h unsubscribes.
func (d *DeviceClient) OnDesiredUpdate(ctx context.Context, h func(DesiredUpdate)) error {
	d.mu.Lock()
	d.desired = h
	d.mu.Unlock()
	if h == nil {
		if lc := d.conn.current(); lc != nil {
			if tc, ok := lc.link("twin").(*twinChannel); ok {
				_, err := tc.request(ctx, "DELETE", twinResourceDesired, nil)
				tc.setSubscribed(false)
				return err
			}
		}
		return nil
	}
	if err := d.kick(); err != nil {
		return err
	}
	// Subscribe in the caller's time so that errors show.
	return d.do(ctx, "subscribe to desired properties", func(ctx context.Context, lc *liveConn) error {
		tc, err := d.twinChannel(ctx, lc)
		if err != nil {
			return err
		}
		err = tc.subscribe(ctx)
		lc.note("twin", err)
		return err
	})
}

// link returns the link stored under key, or nil.
func (lc *liveConn) link(key string) any {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.links[key]
}

// twinResponse is a parsed twin reply.
type twinResponse struct {
	status  int
	version int64
	body    []byte
}

// twinChannel is a connection's pair of twin links: requests out,
// responses and desired-property pushes in.
type twinChannel struct {
	d   *DeviceClient
	snd *goamqp.Sender
	rcv *goamqp.Receiver

	mu         sync.Mutex
	pending    map[string]chan twinResponse
	subscribed bool
	dead       error
}

func (d *DeviceClient) twinChannel(ctx context.Context, lc *liveConn) (*twinChannel, error) {
	addr := d.base + "/twin"
	return cachedLink(ctx, lc, "twin", func(ctx context.Context, s *goamqp.Session) (*twinChannel, error) {
		props := linkProps("twin:" + newUUID())
		settled := goamqp.SenderSettleModeSettled
		rcv, err := s.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Credit: 100, Properties: props})
		if err != nil {
			return nil, amqpErr("attach twin receiver", err)
		}
		snd, err := s.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: props, SettlementMode: &settled})
		if err != nil {
			closeQuietly(rcv)
			return nil, amqpErr("attach twin sender", err)
		}
		tc := &twinChannel{d: d, snd: snd, rcv: rcv, pending: map[string]chan twinResponse{}}
		if !lc.c.spawn(func() { tc.receive(lc) }) {
			closeQuietly(tc)
			return nil, ErrClosed
		}
		return tc, nil
	})
}

// Close implements closer.
func (tc *twinChannel) Close(ctx context.Context) error {
	err := tc.snd.Close(ctx)
	if e := tc.rcv.Close(ctx); err == nil {
		err = e
	}
	return err
}

func closeQuietly(l closer) {
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = l.Close(ctx)
}

// receive dispatches responses to their requests and pushes to the
// desired-property handler until the link ends.
func (tc *twinChannel) receive(lc *liveConn) {
	for {
		m, err := tc.rcv.Receive(lc.ctx, nil)
		if err != nil {
			tc.fail(lc, err)
			return
		}
		_ = tc.rcv.AcceptMessage(lc.ctx, m)
		var r twinResponse
		if v, ok := annotationInt(m, "status"); ok {
			r.status = int(v)
		}
		r.version, _ = annotationInt(m, "version")
		r.body = messageBody(m)
		corr := ""
		if m.Properties != nil {
			corr = idString(m.Properties.CorrelationID)
		}
		if corr == "" {
			tc.push(r)
			continue
		}
		tc.mu.Lock()
		ch := tc.pending[corr]
		delete(tc.pending, corr)
		tc.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
}

// fail ends the channel: waiting requests get the error, the keeper is
// told so that it restores the subscription.
func (tc *twinChannel) fail(lc *liveConn, err error) {
	err = amqpErr("twin link", err)
	tc.mu.Lock()
	tc.dead = err
	pending := tc.pending
	tc.pending = map[string]chan twinResponse{}
	tc.mu.Unlock()
	for _, ch := range pending {
		close(ch)
	}
	lc.mu.Lock()
	if lc.links["twin"] == tc {
		delete(lc.links, "twin")
	}
	lc.mu.Unlock()
	if lc.alive() {
		lc.c.spawn(func() { closeQuietly(tc) })
	}
	if _, desired, _ := tc.d.features(); desired {
		select {
		case tc.d.changed <- struct{}{}:
		default:
		}
	}
}

// push hands a desired-property change to the handler.
func (tc *twinChannel) push(r twinResponse) {
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.UseNumber()
	var patch map[string]any
	if err := dec.Decode(&patch); err != nil {
		tc.d.log.Info("amqphub client: ignoring an undecodable desired-property update", "err", err)
		return
	}
	u := DesiredUpdate{Patch: patch, Version: r.version}
	if v := propsVersion(patch); v != 0 {
		u.Version = v
	}
	tc.d.mu.Lock()
	h := tc.d.desired
	tc.d.mu.Unlock()
	if h != nil {
		tc.d.events.push(func() { h(u) })
	}
}

// request sends one twin request and waits for its response.
func (tc *twinChannel) request(ctx context.Context, op, resource string, body []byte) (twinResponse, error) {
	id := newUUID()
	ch := make(chan twinResponse, 1)
	tc.mu.Lock()
	if tc.dead != nil {
		err := tc.dead
		tc.mu.Unlock()
		return twinResponse{}, err
	}
	tc.pending[id] = ch
	tc.mu.Unlock()
	forget := func() {
		tc.mu.Lock()
		delete(tc.pending, id)
		tc.mu.Unlock()
	}
	ann := goamqp.Annotations{"operation": op}
	if resource != "" {
		ann["resource"] = resource
	}
	if body == nil {
		body = []byte(" ")
	}
	msg := &goamqp.Message{
		Annotations: ann,
		Properties:  &goamqp.MessageProperties{CorrelationID: id},
		Data:        [][]byte{body},
	}
	if err := tc.snd.Send(ctx, msg, nil); err != nil {
		forget()
		return twinResponse{}, amqpErr("twin "+op, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			tc.mu.Lock()
			err := tc.dead
			tc.mu.Unlock()
			return twinResponse{}, err
		}
		if r.status < 200 || r.status >= 300 {
			return r, twinError(r)
		}
		return r, nil
	case <-ctx.Done():
		forget()
		return twinResponse{}, ctx.Err()
	}
}

// twinError turns an error status into an *Error (the REST error type, so
// the same sentinels match).
func twinError(r twinResponse) error {
	e := &Error{StatusCode: r.status, Message: string(bytes.TrimSpace(r.body))}
	var body struct {
		ErrorCode any    `json:"errorCode"`
		Code      string `json:"code"`
		Message   string `json:"message"`
	}
	if json.Unmarshal(r.body, &body) == nil {
		if s, ok := body.ErrorCode.(string); ok {
			e.Code = s
		} else if body.Code != "" {
			e.Code = body.Code
		} else if body.ErrorCode != nil {
			e.Code = fmt.Sprint(body.ErrorCode)
		}
		if body.Message != "" {
			e.Message = body.Message
		}
	}
	return e
}

func (tc *twinChannel) setSubscribed(v bool) {
	tc.mu.Lock()
	tc.subscribed = v
	tc.mu.Unlock()
}

// subscribe asks for desired-property pushes once per channel.
func (tc *twinChannel) subscribe(ctx context.Context) error {
	tc.mu.Lock()
	done := tc.subscribed
	tc.mu.Unlock()
	if done {
		return nil
	}
	if _, err := tc.request(ctx, "PUT", twinResourceDesired, nil); err != nil {
		return fmt.Errorf("subscribe to desired properties: %w", err)
	}
	tc.setSubscribed(true)
	return nil
}
