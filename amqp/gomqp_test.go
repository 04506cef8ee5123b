package amqp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp"
	"amqphub/amqp/amqptest"
	"amqphub/internal/demo"
)

// These tests drive the engine with github.com/Azure/go-amqp, an
// independent client implementation, through the demo application.

func startDemo(t *testing.T, mod func(*amqp.Config)) *amqptest.Server {
	t.Helper()
	cfg := amqp.Config{Handler: demo.NewHandler(), SASL: demo.Authenticator{}, AllowNoSASL: true}
	if mod != nil {
		mod(&cfg)
	}
	return amqptest.Start(t, cfg)
}

func dial(t *testing.T, srv *amqptest.Server, opts *goamqp.ConnOptions) *goamqp.Conn {
	t.Helper()
	if opts == nil {
		opts = &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "guest")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, srv.URL, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func session(t *testing.T, c *goamqp.Conn) *goamqp.Session {
	t.Helper()
	s, err := c.NewSession(ctxT(t), nil)
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGoAMQPSASL(t *testing.T) {
	srv := startDemo(t, nil)
	tests := []struct {
		name string
		opts *goamqp.ConnOptions
		ok   bool
	}{
		{"plain ok", &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "guest")}, true},
		{"plain wrong password", &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain("guest", "nope")}, false},
		{"anonymous", &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous()}, true},
		{"no sasl", &goamqp.ConnOptions{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := goamqp.Dial(ctx, srv.URL, tc.opts)
			if tc.ok != (err == nil) {
				t.Fatalf("dial error = %v, want success %v", err, tc.ok)
			}
			if err != nil {
				return
			}
			defer c.Close()
			s, err := c.NewSession(ctx, nil)
			if err != nil {
				t.Fatalf("session: %v", err)
			}
			snd, err := s.NewSender(ctx, "sink", nil)
			if err != nil {
				t.Fatalf("sender: %v", err)
			}
			if err := snd.Send(ctx, goamqp.NewMessage([]byte("x")), nil); err != nil {
				t.Fatalf("send: %v", err)
			}
		})
	}
}

func TestGoAMQPNoSASLRefusedWhenRequired(t *testing.T) {
	srv := startDemo(t, func(c *amqp.Config) { c.AllowNoSASL = false })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := goamqp.Dial(ctx, srv.URL, &goamqp.ConnOptions{}); err == nil {
		c.Close()
		t.Fatal("a connection without SASL succeeded on a server that requires SASL")
	}
}

// TestGoAMQPRoundTripSizes sends messages of many sizes through a queue
// and checks they come back byte-exact, including multi-frame transfers
// in both directions (frames are at most 64 KiB).
func TestGoAMQPRoundTripSizes(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	for _, size := range []int{1, 1000, 65000, 65536, 200_000, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			addr := fmt.Sprintf("queue/sizes-%d", size)
			snd, err := s.NewSender(ctx, addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			body := make([]byte, size)
			for i := range body {
				body[i] = byte(i*7 + size)
			}
			msg := goamqp.NewMessage(body)
			msg.Properties = &goamqp.MessageProperties{MessageID: "id-1", ContentType: ptr("application/octet-stream")}
			msg.ApplicationProperties = map[string]any{"size": int64(size), "s": "v"}
			if err := snd.Send(ctx, msg, nil); err != nil {
				t.Fatalf("send %d bytes: %v", size, err)
			}
			rcv, err := s.NewReceiver(ctx, addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := rcv.Receive(ctx, nil)
			if err != nil {
				t.Fatalf("receive: %v", err)
			}
			if err := rcv.AcceptMessage(ctx, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.GetData(), body) {
				t.Fatalf("body of %d bytes came back as %d bytes, different", size, len(got.GetData()))
			}
			if got.Properties == nil || got.Properties.MessageID != "id-1" || got.ApplicationProperties["size"] != int64(size) {
				t.Fatalf("properties not intact: %+v %+v", got.Properties, got.ApplicationProperties)
			}
			snd.Close(ctx)
			rcv.Close(ctx)
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestGoAMQPMessageTooLarge(t *testing.T) {
	srv := startDemo(t, nil) // demo links accept up to 2 MiB
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "sink", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := snd.MaxMessageSize(); got != 2<<20 {
		t.Fatalf("sender sees max-message-size %d, want %d", got, 2<<20)
	}
	err = snd.Send(ctx, goamqp.NewMessage(make([]byte, 3<<20)), nil)
	if err == nil {
		t.Fatal("a 3 MiB message was accepted on a 2 MiB link")
	}
}

func TestGoAMQPSettleModes(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)

	t.Run("presettled sender", func(t *testing.T) {
		snd, err := s.NewSender(ctx, "queue/presettled", &goamqp.SenderOptions{SettlementMode: goamqp.SenderSettleModeSettled.Ptr()})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			if err := snd.Send(ctx, goamqp.NewMessage([]byte(fmt.Sprint(i))), nil); err != nil {
				t.Fatal(err)
			}
		}
		rcv, err := s.NewReceiver(ctx, "queue/presettled", nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100; i++ {
			m, err := rcv.Receive(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if string(m.GetData()) != fmt.Sprint(i) {
				t.Fatalf("message %d: got %q", i, m.GetData())
			}
			rcv.AcceptMessage(ctx, m)
		}
	})

	t.Run("receiver settle mode second", func(t *testing.T) {
		snd, err := s.NewSender(ctx, "queue/second", nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"a", "b"} {
			if err := snd.Send(ctx, goamqp.NewMessage([]byte(b)), nil); err != nil {
				t.Fatal(err)
			}
		}
		rcv, err := s.NewReceiver(ctx, "queue/second", &goamqp.ReceiverOptions{SettlementMode: goamqp.ReceiverSettleModeSecond.Ptr(), Credit: 1})
		if err != nil {
			t.Fatal(err)
		}
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != "a" {
			t.Fatalf("got %q, want a", m.GetData())
		}
		// Release: it must come back first.
		if err := rcv.ReleaseMessage(ctx, m); err != nil {
			t.Fatalf("release in mode second: %v", err)
		}
		m, err = rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != "a" {
			t.Fatalf("after release got %q, want a again", m.GetData())
		}
		if err := rcv.AcceptMessage(ctx, m); err != nil {
			t.Fatalf("accept in mode second: %v", err)
		}
		m, err = rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != "b" {
			t.Fatalf("got %q, want b", m.GetData())
		}
		if err := rcv.AcceptMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
	})
}

// TestGoAMQPCredit checks that the engine never sends beyond the credit a
// receiver grants, and resumes when credit is refilled.
func TestGoAMQPCredit(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	rcv, err := s.NewReceiver(ctx, "source/50", &goamqp.ReceiverOptions{Credit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.IssueCredit(10); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.ApplicationProperties["index"] != int32(i) {
			t.Fatalf("message %d has index %v", i, m.ApplicationProperties["index"])
		}
		rcv.AcceptMessage(ctx, m)
	}
	// With the credit spent, nothing more may arrive. A drain round trip
	// proves the server has nothing in flight: after the server answers
	// the drain, every transfer it sent before has been received.
	if err := rcv.DrainCredit(ctx, nil); err != nil {
		t.Fatalf("drain: %v", err)
	}
	if m := rcv.Prefetched(); m != nil {
		t.Fatalf("received message %v beyond the granted credit", m.ApplicationProperties)
	}
	if err := rcv.IssueCredit(100); err != nil {
		t.Fatal(err)
	}
	for i := 10; i < 50; i++ {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.ApplicationProperties["index"] != int32(i) {
			t.Fatalf("message %d has index %v", i, m.ApplicationProperties["index"])
		}
		if v, _ := m.Value.(string); v != fmt.Sprintf("message %d", i) {
			t.Fatalf("value %q", m.Value)
		}
		rcv.AcceptMessage(ctx, m)
	}
}

// remoteErr returns the server's error from a failed attach: go-amqp
// returns it as *Error when the attach is refused.
func remoteErr(t *testing.T, err error) *goamqp.Error {
	t.Helper()
	var ae *goamqp.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not the server's *amqp.Error", err, err)
	}
	return ae
}

func TestGoAMQPRefusedAttach(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	tests := []struct {
		addr     string
		receiver bool
		cond     goamqp.ErrCond
	}{
		{"refuse", false, goamqp.ErrCondUnauthorizedAccess},
		{"refuse", true, goamqp.ErrCondUnauthorizedAccess},
		{"no/such/node", false, goamqp.ErrCondNotFound},
		{"no/such/node", true, goamqp.ErrCondNotFound},
	}
	for _, tc := range tests {
		var err error
		if tc.receiver {
			_, err = s.NewReceiver(ctx, tc.addr, nil)
		} else {
			_, err = s.NewSender(ctx, tc.addr, nil)
		}
		if got := remoteErr(t, err); got.Condition != tc.cond {
			t.Errorf("%s (receiver %v): condition %q, want %q", tc.addr, tc.receiver, got.Condition, tc.cond)
		}
	}
	// The session still works after refusals.
	snd, err := s.NewSender(ctx, "sink", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, goamqp.NewMessage([]byte("ok")), nil); err != nil {
		t.Fatal(err)
	}
}

func TestGoAMQPRedirect(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	// As on Azure, the attach succeeds and the detach that follows carries
	// the redirect, which go-amqp reports as a *LinkError.
	rcv, err := s.NewReceiver(ctx, "redirect", nil)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	_, err = rcv.Receive(ctx, nil)
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil {
		t.Fatalf("receive after redirect: %v (%T), want *LinkError with the remote error", err, err)
	}
	re := le.RemoteErr
	if re.Condition != goamqp.ErrCondLinkRedirect {
		t.Fatalf("condition %q, want %q", re.Condition, goamqp.ErrCondLinkRedirect)
	}
	want := map[string]any{"hostname": "redirect.example", "network-host": "redirect.example", "port": int32(5671), "address": "queue/redirected"}
	for k, v := range want {
		if re.Info[k] != v {
			t.Errorf("info[%q] = %#v, want %#v", k, re.Info[k], v)
		}
	}
}

func TestGoAMQPReject(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "reject", nil)
	if err != nil {
		t.Fatal(err)
	}
	err = snd.Send(ctx, goamqp.NewMessage([]byte("x")), nil)
	var ae *goamqp.Error
	if !errors.As(err, &ae) || ae.Condition != goamqp.ErrCondNotAllowed {
		t.Fatalf("send to reject: %v, want a rejected outcome with %s", err, goamqp.ErrCondNotAllowed)
	}
}

// TestGoAMQPHeartbeats: a client with a 1 s idle timeout stays connected
// through 3 s of silence only if the server sends empty frames in time.
func TestGoAMQPHeartbeats(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, &goamqp.ConnOptions{SASLType: goamqp.SASLTypeAnonymous(), IdleTimeout: time.Second})
	s := session(t, c)
	ctx := ctxT(t)
	snd, err := s.NewSender(ctx, "sink", nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
		t.Fatalf("connection dropped during silence: %v", c.Err())
	case <-time.After(3 * time.Second):
	}
	if err := snd.Send(ctx, goamqp.NewMessage([]byte("still here")), nil); err != nil {
		t.Fatalf("send after silence: %v", err)
	}
}

func TestGoAMQPManySessionsAndLinks(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	ctx := ctxT(t)
	type pair struct {
		snd  *goamqp.Sender
		rcv  *goamqp.Receiver
		addr string
	}
	var pairs []pair
	for i := 0; i < 20; i++ {
		s := session(t, c)
		for j := 0; j < 5; j++ {
			addr := fmt.Sprintf("queue/many-%d-%d", i, j)
			snd, err := s.NewSender(ctx, addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			rcv, err := s.NewReceiver(ctx, addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			pairs = append(pairs, pair{snd, rcv, addr})
		}
	}
	for _, p := range pairs {
		if err := p.snd.Send(ctx, goamqp.NewMessage([]byte(p.addr)), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pairs {
		m, err := p.rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetData()) != p.addr {
			t.Fatalf("link %s got %q", p.addr, m.GetData())
		}
		p.rcv.AcceptMessage(ctx, m)
	}
}

func TestGoAMQPShutdownForcesClose(t *testing.T) {
	srv := startDemo(t, nil)
	c := dial(t, srv, nil)
	s := session(t, c)
	if _, err := s.NewSender(ctxT(t), "sink", nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("client connection still open after shutdown")
	}
	var ce *goamqp.ConnError
	if !errors.As(c.Err(), &ce) || ce.RemoteErr == nil || ce.RemoteErr.Condition != goamqp.ErrCondConnectionForced {
		t.Fatalf("connection ended with %v, want remote %s", c.Err(), goamqp.ErrCondConnectionForced)
	}
}
