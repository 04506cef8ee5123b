package eventhub_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/store/partlog"
)

// devicePayload is a record as ingest stores it: a complete encoded AMQP
// message whose annotations hold the iothub-* values.
func devicePayload(tb testing.TB, device string, i int) []byte {
	tb.Helper()
	m := &frames.Message{
		Annotations: map[any]any{
			encoding.Symbol("iothub-connection-device-id"):   device,
			encoding.Symbol("iothub-connection-auth-method"): `{"scope":"device","type":"sas","issuer":"iothub"}`,
			encoding.Symbol("iothub-enqueuedtime"):           time.UnixMilli(1700000000000 + int64(i)).UTC(),
			encoding.Symbol("iothub-message-source"):         "Telemetry",
		},
		Properties:            &frames.Properties{MessageID: fmt.Sprintf("msg-%d", i), ContentType: "application/json"},
		ApplicationProperties: map[string]any{"index": int64(i)},
		Data:                  [][]byte{fmt.Appendf(nil, `{"n":%d}`, i)},
	}
	b, err := m.AppendAMQP(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// seed appends n device messages to partition and returns their entries.
func seed(tb testing.TB, lg partlog.Log, partition, n, from int) []partlog.Entry {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := make([]partlog.Entry, 0, n)
	for i := from; i < from+n; i++ {
		e, err := lg.Append(ctx, partition, devicePayload(tb, "dev1", i))
		if err != nil {
			tb.Fatalf("append: %v", err)
		}
		out = append(out, e)
	}
	return out
}

func ownerToken(tb testing.TB, host string) string {
	k, err := base64.StdEncoding.DecodeString(auth.DevIoTHubOwnerPrimaryKey)
	if err != nil {
		tb.Fatal(err)
	}
	return sas.Sign(host, k, auth.PolicyIoTHubOwner, time.Now().Add(time.Hour))
}

func policyToken(tb testing.TB, host, policy, b64 string) string {
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		tb.Fatal(err)
	}
	return sas.Sign(host, k, policy, time.Now().Add(time.Hour))
}

// dialOwner connects over plain AMQP with SASL PLAIN as iothubowner.
func dialOwner(tb testing.TB, s *server.Server) *goamqp.Conn {
	tb.Helper()
	return dial(tb, "amqp://"+s.AMQPAddr, nil, s)
}

func dial(tb testing.TB, url string, tlsCfg *tls.Config, s *server.Server) *goamqp.Conn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host := s.Options.HostName
	c, err := goamqp.Dial(ctx, url, &goamqp.ConnOptions{
		SASLType:  goamqp.SASLTypePlain(auth.PolicyIoTHubOwner+"@sas.root."+s.Options.HubName, ownerToken(tb, host)),
		HostName:  host,
		TLSConfig: tlsCfg,
	})
	if err != nil {
		tb.Fatalf("dial %s: %v", url, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func newSession(tb testing.TB, c *goamqp.Conn) *goamqp.Session {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		tb.Fatalf("session: %v", err)
	}
	return sess
}

// partitionAddr is the Event-Hub-compatible address of a partition.
func partitionAddr(s *server.Server, group string, p int) string {
	return fmt.Sprintf("%s/ConsumerGroups/%s/Partitions/%d", s.Options.EventHubName, group, p)
}

type rcvOpts struct {
	filter string
	epoch  *int64
	name   string
	credit int32
}

func newReceiver(ctx context.Context, sess *goamqp.Session, addr string, o rcvOpts) (*goamqp.Receiver, error) {
	opts := &goamqp.ReceiverOptions{
		SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr(),
		Credit:         o.credit,
		Properties:     map[string]any{},
	}
	if o.filter != "" {
		opts.Filters = []goamqp.LinkFilter{goamqp.NewSelectorFilter(o.filter)}
	}
	if o.epoch != nil {
		opts.Properties["com.microsoft:epoch"] = *o.epoch
	}
	if o.name != "" {
		opts.Properties["com.microsoft:receiver-name"] = o.name
	}
	return sess.NewReceiver(ctx, addr, opts)
}

func condOf(err error) goamqp.ErrCond {
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil {
		return le.RemoteErr.Condition
	}
	var ae *goamqp.Error
	if errors.As(err, &ae) {
		return ae.Condition
	}
	return ""
}

// checkEvent verifies the annotations and content of a delivered event.
func checkEvent(tb testing.TB, m *goamqp.Message, want partlog.Entry, index int) {
	tb.Helper()
	if got, ok := m.Annotations["x-opt-sequence-number"].(int64); !ok || got != want.Seq {
		tb.Errorf("x-opt-sequence-number %#v (%T), want int64 %d", m.Annotations["x-opt-sequence-number"], m.Annotations["x-opt-sequence-number"], want.Seq)
	}
	if got, ok := m.Annotations["x-opt-offset"].(string); !ok || got != fmt.Sprint(want.Offset) {
		tb.Errorf("x-opt-offset %#v (%T), want string %d", m.Annotations["x-opt-offset"], m.Annotations["x-opt-offset"], want.Offset)
	}
	if got, ok := m.Annotations["x-opt-enqueued-time"].(time.Time); !ok || got.UnixMilli() != want.EnqueuedTime {
		tb.Errorf("x-opt-enqueued-time %#v, want timestamp %d", m.Annotations["x-opt-enqueued-time"], want.EnqueuedTime)
	}
	if got := m.Annotations["iothub-connection-device-id"]; got != "dev1" {
		tb.Errorf("iothub-connection-device-id %#v, want dev1", got)
	}
	if got := m.ApplicationProperties["index"]; got != int64(index) {
		tb.Errorf("application property index %#v, want %d", got, index)
	}
	if got := string(m.GetData()); got != fmt.Sprintf(`{"n":%d}`, index) {
		tb.Errorf("body %q, want event %d", got, index)
	}
	if m.Properties == nil || m.Properties.MessageID != fmt.Sprintf("msg-%d", index) {
		tb.Errorf("message-id %#v, want msg-%d", m.Properties, index)
	}
}

// httpsClient trusts the hub's certificate.
func httpsClient(s *server.Server) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: s.ClientTLS}}
}
