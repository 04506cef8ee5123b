package c2dsvc_test

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/c2dsvc"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/store/c2d"
)

// startHub starts an in-memory hub with devices d1 (with module m1), d2,
// d3 and the disabled d4; cfg is the C2D configuration.
func startHub(t testing.TB, cfg c2dsvc.Config) *server.Server {
	t.Helper()
	return server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "d1", Modules: []string{"m1"}}, {ID: "d2"}, {ID: "d3"}, {ID: "d4", Disabled: true},
		}
		o.C2D = cfg
	})
}

func decodeKey(t testing.TB, b64 string) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// deviceLogin returns the SASL PLAIN user and SAS token of a device (module
// "") or module.
func deviceLogin(t testing.TB, s *server.Server, dev, module string) (user, token string) {
	t.Helper()
	user, token, err := s.DeviceLogin(context.Background(), dev, module, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return user, token
}

// dial opens a go-amqp connection with SASL PLAIN on the plain listener.
func dial(t testing.TB, addr, user, token string) *goamqp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqp://"+addr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(user, token), HostName: "localhost"})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serviceConn dials as the iothubowner policy.
func serviceConn(t testing.TB, s *server.Server) *goamqp.Conn {
	t.Helper()
	return dial(t, s.AMQPAddr, "iothubowner@sas.root."+s.Options.HubName,
		sas.Sign(s.Options.HostName, decodeKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour)))
}

func deviceConn(t testing.TB, s *server.Server, dev, module string) *goamqp.Conn {
	t.Helper()
	user, token := deviceLogin(t, s, dev, module)
	return dial(t, s.AMQPAddr, user, token)
}

func session(t testing.TB, c *goamqp.Conn) *goamqp.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// c2dSender attaches the service's sender.
func c2dSender(t testing.TB, c *goamqp.Conn) *goamqp.Sender {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	snd, err := session(t, c).NewSender(ctx, "/messages/devicebound", nil)
	if err != nil {
		t.Fatalf("attach /messages/devicebound: %v", err)
	}
	return snd
}

// receiver attaches a receiver; mode second when second.
func receiver(t testing.TB, c *goamqp.Conn, addr string, credit int32, second bool) *goamqp.Receiver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &goamqp.ReceiverOptions{Credit: credit}
	if second {
		opts.SettlementMode = goamqp.ReceiverSettleModeSecond.Ptr()
	}
	r, err := session(t, c).NewReceiver(ctx, addr, opts)
	if err != nil {
		t.Fatalf("attach %s: %v", addr, err)
	}
	return r
}

func deviceBound(dev, module string) string {
	if module == "" {
		return "/devices/" + dev + "/messages/devicebound"
	}
	return "/devices/" + dev + "/modules/" + module + "/messages/devicebound"
}

// c2dMessage builds a service message to addr.
func c2dMessage(to string, id any, ack string, body string) *goamqp.Message {
	m := &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: id},
		Data:       [][]byte{[]byte(body)},
	}
	if to != "" {
		m.Properties.To = &to
	}
	if ack != "" {
		m.ApplicationProperties = map[string]any{c2dsvc.AckProperty: ack}
	}
	return m
}

func send(t testing.TB, snd *goamqp.Sender, m *goamqp.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := snd.Send(ctx, m, nil); err != nil {
		t.Fatalf("send %v: %v", m.Properties.MessageID, err)
	}
}

// receive waits up to 10 s for a message.
func receive(t testing.TB, r *goamqp.Receiver) *goamqp.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := r.Receive(ctx, nil)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return m
}

// settle applies a device outcome and fails the test on error.
func settle(t testing.TB, r *goamqp.Receiver, m *goamqp.Message, how string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	switch how {
	case "accept":
		err = r.AcceptMessage(ctx, m)
	case "reject":
		err = r.RejectMessage(ctx, m, nil)
	case "release":
		err = r.ReleaseMessage(ctx, m)
	case "modify-failed":
		err = r.ModifyMessage(ctx, m, &goamqp.ModifyMessageOptions{DeliveryFailed: true})
	case "modify-undeliverable":
		err = r.ModifyMessage(ctx, m, &goamqp.ModifyMessageOptions{UndeliverableHere: true})
	case "modify":
		err = r.ModifyMessage(ctx, m, &goamqp.ModifyMessageOptions{})
	default:
		t.Fatalf("unknown outcome %q", how)
	}
	if err != nil {
		t.Fatalf("%s: %v", how, err)
	}
}

// feedbackReader collects feedback records from a feedback receiver.
type feedbackReader struct {
	t       testing.TB
	r       *goamqp.Receiver
	batches []*goamqp.Message
}

func newFeedbackReader(t testing.TB, c *goamqp.Conn) *feedbackReader {
	return &feedbackReader{t: t, r: receiver(t, c, "/messages/serviceBound/feedback", 10, false)}
}

// next returns the records of the next feedback message, which it accepts.
func (f *feedbackReader) next() []c2d.FeedbackRecord {
	f.t.Helper()
	m := receive(f.t, f.r)
	f.batches = append(f.batches, m)
	if len(m.Data) != 1 {
		f.t.Fatalf("feedback message has %d data sections; want 1", len(m.Data))
	}
	recs, err := c2d.ParseFeedback(m.Data[0])
	if err != nil {
		f.t.Fatalf("feedback body %q: %v", m.Data[0], err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.r.AcceptMessage(ctx, m); err != nil {
		f.t.Fatalf("accept feedback: %v", err)
	}
	return recs
}

// want reads feedback until it has the given "messageID:Status" outcomes
// (in any order, across batches) and fails on anything else.
func (f *feedbackReader) want(outcomes ...string) {
	f.t.Helper()
	left := map[string]int{}
	for _, o := range outcomes {
		left[o]++
	}
	for n := len(outcomes); n > 0; {
		for _, r := range f.next() {
			o := r.OriginalMessageID + ":" + r.Status.String()
			if left[o] == 0 {
				f.t.Fatalf("unexpected feedback %s (want %q)", o, outcomes)
			}
			left[o]--
			n--
		}
	}
}

// condOf returns the AMQP condition of a go-amqp error.
func condOf(err error) goamqp.ErrCond {
	var ae *goamqp.Error
	if errors.As(err, &ae) {
		return ae.Condition
	}
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil {
		return le.RemoteErr.Condition
	}
	return ""
}

// ann returns a message annotation; go-amqp decodes symbol keys as
// strings.
func ann(m *goamqp.Message, key string) any {
	if v, ok := m.Annotations[key]; ok {
		return v
	}
	return m.Annotations[goamqp.Symbol(key)]
}
