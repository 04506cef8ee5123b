package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	goamqp "github.com/Azure/go-amqp"
)

// MethodRequest is a direct method call received by a device.
type MethodRequest struct {
	Name string
	// Payload is the JSON payload the service sent ("null" when none).
	Payload json.RawMessage
}

// MethodResponse is a device's answer to a direct method.
type MethodResponse struct {
	// Status is the result code the service sees (e.g. 200).
	Status int
	// Payload is marshalled as JSON (a json.RawMessage is sent as is; nil
	// sends null).
	Payload any
}

// MethodHandler answers a direct method. An error is answered with status
// 500 and {"message": error text}. ctx ends when the client closes.
type MethodHandler func(ctx context.Context, req MethodRequest) (MethodResponse, error)

// Status codes the client answers with when no handler does.
const (
	// MethodNotImplemented answers methods without a handler.
	MethodNotImplemented = http.StatusNotImplemented
	// MethodHandlerFailed answers methods whose handler failed.
	MethodHandlerFailed = http.StatusInternalServerError
)

// HandleMethod registers h for the direct method name (a nil h removes
// it). The first registration opens the methods links; they are restored
// after each reconnect. Each call runs on its own goroutine. Methods
// without a handler are answered with status 501.
func (d *DeviceClient) HandleMethod(ctx context.Context, name string, h MethodHandler) error {
	if name == "" {
		return errors.New("handle method: empty method name")
	}
	d.mu.Lock()
	if h == nil {
		delete(d.methods, name)
	} else {
		d.methods[name] = h
	}
	d.mu.Unlock()
	if h == nil {
		return nil
	}
	if err := d.kick(); err != nil {
		return err
	}
	// Open the links in the caller's time so that errors show, and so that
	// the device is reachable when this returns.
	return d.do(ctx, "subscribe to direct methods", func(ctx context.Context, lc *liveConn) error {
		_, err := d.methodChannel(ctx, lc)
		return err
	})
}

// methodChannel is a connection's pair of methods links.
type methodChannel struct {
	snd *goamqp.Sender
	rcv *goamqp.Receiver
}

// Close implements closer.
func (mc *methodChannel) Close(ctx context.Context) error {
	err := mc.snd.Close(ctx)
	if e := mc.rcv.Close(ctx); err == nil {
		err = e
	}
	return err
}

func (d *DeviceClient) methodChannel(ctx context.Context, lc *liveConn) (*methodChannel, error) {
	addr := d.base + "/methods/devicebound"
	return cachedLink(ctx, lc, "methods", func(ctx context.Context, s *goamqp.Session) (*methodChannel, error) {
		props := linkProps("methods:" + newUUID())
		// The response link first: a request may arrive as soon as the
		// request link is attached.
		snd, err := s.NewSender(ctx, addr, &goamqp.SenderOptions{Properties: props})
		if err != nil {
			return nil, amqpErr("attach methods sender", err)
		}
		rcv, err := s.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{Credit: 100, Properties: props})
		if err != nil {
			closeQuietly(snd)
			return nil, amqpErr("attach methods receiver", err)
		}
		mc := &methodChannel{snd: snd, rcv: rcv}
		if !lc.c.spawn(func() { d.serveMethods(lc, mc) }) {
			closeQuietly(mc)
			return nil, ErrClosed
		}
		return mc, nil
	})
}

// serveMethods receives method requests until the link ends and runs
// each on its own goroutine.
func (d *DeviceClient) serveMethods(lc *liveConn, mc *methodChannel) {
	for {
		m, err := mc.rcv.Receive(lc.ctx, nil)
		if err != nil {
			lc.mu.Lock()
			if lc.links["methods"] == mc {
				delete(lc.links, "methods")
			}
			lc.mu.Unlock()
			if lc.alive() {
				lc.c.spawn(func() { closeQuietly(mc) })
			}
			if methods, _, _ := d.features(); methods {
				select {
				case d.changed <- struct{}{}:
				default:
				}
			}
			return
		}
		_ = mc.rcv.AcceptMessage(lc.ctx, m)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.answerMethod(lc, mc, m)
		}()
	}
}

// answerMethod runs the handler of one request and sends its response
// with the request's correlation-id (same AMQP type).
func (d *DeviceClient) answerMethod(lc *liveConn, mc *methodChannel, m *goamqp.Message) {
	var corr any
	if m.Properties != nil {
		corr = m.Properties.CorrelationID
	}
	name, _ := m.ApplicationProperties["IoThub-methodname"].(string)
	payload := messageBody(m)
	if len(payload) == 0 {
		payload = []byte("null")
	}
	d.mu.Lock()
	h := d.methods[name]
	d.mu.Unlock()

	status, body := MethodNotImplemented, []byte(nil)
	if h == nil {
		body, _ = json.Marshal(map[string]string{"message": fmt.Sprintf("the device has no handler for method %q", name)})
	} else {
		resp, err := h(d.ctx, MethodRequest{Name: name, Payload: json.RawMessage(payload)})
		status = resp.Status
		if err == nil {
			body, err = json.Marshal(resp.Payload)
		}
		if err != nil {
			status = MethodHandlerFailed
			body, _ = json.Marshal(map[string]string{"message": err.Error()})
		}
	}
	out := &goamqp.Message{
		Properties:            &goamqp.MessageProperties{CorrelationID: corr},
		ApplicationProperties: map[string]any{"IoThub-status": int32(status)},
		Data:                  [][]byte{body},
	}
	ctx, cancel := context.WithTimeout(lc.ctx, dialTimeout)
	defer cancel()
	if err := mc.snd.Send(ctx, out, nil); err != nil {
		d.log.Info("amqphub client: cannot send a method response", "method", name, "err", err)
	}
}
