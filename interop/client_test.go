package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/server"
)

// The Go client library meets the official Node SDKs through the hub: what
// the Go client sends, the Node SDKs read as they read IoT Hub's, and the
// other way round. The Node side is a script run with `node -e` in
// interop/node (so it finds node_modules); it reports on stdout, one
// "TAG json" line per event, and exits when its standard input closes.

// nodeScript runs script with env; lines gives its stdout lines; closing
// stdin (stop) ends it; wait returns its error and output.
type nodeScript struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	out   bytes.Buffer
	mu    sync.Mutex
	done  chan error
}

func startNode(t *testing.T, env []string, script string) *nodeScript {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("node is not installed: the interop suite needs Node.js 20")
	}
	if _, err := os.Stat(NodeDir() + "/node_modules/azure-iot-device"); err != nil {
		t.Fatalf("npm packages are missing: run `npm ci` in %s", NodeDir())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	n := &nodeScript{lines: make(chan string, 100), done: make(chan error, 1)}
	n.cmd = exec.CommandContext(ctx, "node", "-e", script)
	n.cmd.Dir = NodeDir()
	n.cmd.Env = append(os.Environ(), env...)
	var err error
	if n.stdin, err = n.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := n.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n.cmd.Stderr = &lockedWriter{mu: &n.mu, w: &n.out}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			n.mu.Lock()
			n.out.WriteString(sc.Text() + "\n")
			n.mu.Unlock()
			n.lines <- sc.Text()
		}
		close(n.lines)
		n.done <- n.cmd.Wait()
	}()
	t.Cleanup(func() {
		n.stdin.Close()
		if err := <-n.done; err != nil || t.Failed() {
			n.mu.Lock()
			t.Logf("node script (exit %v):\n%s", err, n.out.String())
			n.mu.Unlock()
		}
	})
	return n
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// expect waits for the line tagged tag and decodes its JSON into v.
func (n *nodeScript) expect(t *testing.T, tag string, v any) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-n.lines:
			if !ok {
				t.Fatalf("node exited before %s", tag)
			}
			rest, found := strings.CutPrefix(l, tag+" ")
			if !found {
				continue
			}
			if v != nil {
				if err := json.Unmarshal([]byte(rest), v); err != nil {
					t.Fatalf("%s %s: %v", tag, rest, err)
				}
			}
			return
		case <-timeout:
			t.Fatalf("no %s from node within 60 s", tag)
		}
	}
}

// warmUpHTTPS makes one HTTPS request before any AMQPS handshake: the hub
// shares its *tls.Config between both listeners and the HTTPS server
// writes to it as it starts, which the race detector reports against a
// handshake (a hub issue).
func warmUpHTTPS(t *testing.T, s *server.Server) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.HTTPSAddr + "/")
	if err != nil {
		t.Fatalf("HTTPS warm-up: %v", err)
	}
	resp.Body.Close()
}

func goClientOpts(s *server.Server) (*client.DeviceOptions, *client.ServiceOptions) {
	return &client.DeviceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr},
		&client.ServiceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr, RESTURL: "https://" + s.HTTPSAddr}
}

// nodeDevice is an azure-iot-device client (Amqp transport) that sends one
// telemetry message, answers the method "echo", completes the first
// cloud-to-device message and reports what it saw.
const nodeDevice = `
const { Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { randomUUID } = require('node:crypto');
(async () => {
  const d = Client.fromConnectionString(process.env.DEVICE_CS, Amqp);
  d.on('error', (e) => console.error('device error', e));
  d.on('message', (msg) => {
    const props = {};
    for (const p of msg.properties.propertyList) props[p.key] = p.value;
    d.complete(msg, (err) => {
      if (err) console.error('complete', err);
      console.log('C2D ' + JSON.stringify({ messageId: String(msg.messageId), correlationId: msg.correlationId,
        data: msg.data.toString(), ack: msg.ack, to: msg.to, contentType: msg.contentType, props }));
    });
  });
  await d.open();
  d.onDeviceMethod('echo', (req, res) => res.send(200, { echo: req.payload }, () => {}));
  const m = new Message(JSON.stringify({ t: 21.5 }));
  m.messageId = randomUUID();
  m.correlationId = 'corr-node';
  m.contentType = 'application/json';
  m.contentEncoding = 'utf-8';
  m.properties.add('site', 'lab');
  await d.sendEvent(m);
  console.log('READY ' + JSON.stringify({ messageId: m.messageId }));
  process.stdin.resume();
  process.stdin.on('end', async () => { await d.close(); process.exit(0); });
})().catch((e) => { console.error(e); process.exit(1); });
`

// TestGoServiceWithNodeDevice: the Go ServiceClient reads the Node
// device's telemetry, sends it a C2D message the Node SDK understands
// (ack, properties, ids), gets the feedback of its completion, and invokes
// its direct method.
func TestGoServiceWithNodeDevice(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "node-dev"}}
		o.C2D.FeedbackInterval = 50 * time.Millisecond
	})
	warmUpHTTPS(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cs, err := s.DeviceConnectionString(ctx, "node-dev")
	if err != nil {
		t.Fatal(err)
	}
	conns, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, sopts := goClientOpts(s)
	svc, err := client.NewServiceClient(conns.Service, sopts)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()

	node := startNode(t, Env("NODE_EXTRA_CA_CERTS", s.CAFile, "DEVICE_CS", cs), nodeDevice)
	var ready struct{ MessageID string }
	node.expect(t, "READY", &ready)

	// Telemetry: the SDK sends its uuid message id as an AMQP uuid.
	r, err := svc.NewEventReader(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e, err := r.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.DeviceID != "node-dev" || e.MessageID != ready.MessageID || e.CorrelationID != "corr-node" || e.ContentType != "application/json" ||
		e.ContentEncoding != "utf-8" || e.Properties["site"] != "lab" || string(e.Body) != `{"t":21.5}` {
		t.Errorf("event from the Node device: %+v", e)
	}

	// Direct method.
	res, err := svc.InvokeMethod(ctx, "node-dev", "", client.MethodCall{Name: "echo", Payload: map[string]int{"n": 7}, ConnectTimeout: 15 * time.Second})
	if err != nil || res.Status != 200 || string(res.Payload) != `{"echo":{"n":7}}` {
		t.Errorf("method: %v %+v", err, res)
	}

	// C2D with full feedback.
	msg := &client.Message{Body: []byte("reboot"), CorrelationID: "c-1", ContentType: "text/plain", Properties: map[string]string{"mode": "soft"}}
	if err := svc.SendC2D(ctx, "node-dev", msg, &client.C2DOptions{Ack: client.AckFull}); err != nil {
		t.Fatal(err)
	}
	var got struct {
		MessageID, CorrelationID, Data, Ack, To, ContentType string
		Props                                                map[string]string
	}
	node.expect(t, "C2D", &got)
	if got.MessageID != msg.MessageID || got.CorrelationID != "c-1" || got.Data != "reboot" || got.Ack != "full" ||
		got.To != "/devices/node-dev/messages/devicebound" || got.Props["mode"] != "soft" {
		t.Errorf("the Node device got %+v", got)
	}
	for {
		b, err := svc.ReceiveFeedback(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Complete(ctx); err != nil {
			t.Fatal(err)
		}
		if len(b.Records) > 0 && b.Records[0].OriginalMessageID == msg.MessageID {
			if b.Records[0].StatusCode != client.FeedbackSuccess {
				t.Errorf("feedback %+v", b.Records[0])
			}
			break
		}
	}
}

// nodeService is an azure-iothub service: it sends a C2D message (uuid id,
// full ack) and waits for its feedback, invokes the method "ping" and
// patches the twin's desired properties.
const nodeService = `
const { Client, Registry } = require('azure-iothub');
const { Message } = require('azure-iot-common');
const { randomUUID } = require('node:crypto');
(async () => {
  const svc = Client.fromConnectionString(process.env.SERVICE_CS);
  await svc.open();
  const fb = new Promise((resolve, reject) => {
    svc.getFeedbackReceiver((err, rcv) => {
      if (err) return reject(err);
      rcv.on('message', (m) => resolve(JSON.parse(m.getData().toString())));
    });
  });
  const m = new Message('from node');
  m.messageId = randomUUID();
  m.ack = 'full';
  m.properties.add('k', 'v');
  await svc.send(process.env.DEVICE_ID, m);
  console.log('SENT ' + JSON.stringify({ messageId: m.messageId }));
  const res = await svc.invokeDeviceMethod(process.env.DEVICE_ID, { methodName: 'ping', payload: { n: 1 }, responseTimeoutInSeconds: 15, connectTimeoutInSeconds: 15 });
  console.log('METHOD ' + JSON.stringify(res.result));
  const reg = Registry.fromConnectionString(process.env.SERVICE_CS);
  await reg.updateTwin(process.env.DEVICE_ID, { properties: { desired: { fromNode: 1 } } }, '*');
  console.log('TWIN {}');
  console.log('FEEDBACK ' + JSON.stringify(await fb));
  await svc.close();
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
`

// TestGoDeviceWithNodeService: the Go DeviceClient receives the Node
// service's C2D message (its uuid message id as text, ack, properties),
// whose completion the Node feedback receiver reports; answers its direct
// method; and gets its desired-property patch.
func TestGoDeviceWithNodeService(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "go-dev"}}
		o.C2D.FeedbackInterval = 50 * time.Millisecond
	})
	warmUpHTTPS(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cs, err := s.DeviceConnectionString(ctx, "go-dev")
	if err != nil {
		t.Fatal(err)
	}
	conns, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dopts, _ := goClientOpts(s)
	d, err := client.NewDeviceClient(cs, dopts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var payload json.RawMessage
	var mu sync.Mutex
	if err := d.HandleMethod(ctx, "ping", func(_ context.Context, req client.MethodRequest) (client.MethodResponse, error) {
		mu.Lock()
		payload = req.Payload
		mu.Unlock()
		return client.MethodResponse{Status: 200, Payload: "pong"}, nil
	}); err != nil {
		t.Fatal(err)
	}
	desired := make(chan client.DesiredUpdate, 1)
	if err := d.OnDesiredUpdate(ctx, func(u client.DesiredUpdate) { desired <- u }); err != nil {
		t.Fatal(err)
	}

	node := startNode(t, Env("NODE_EXTRA_CA_CERTS", s.CAFile, "SERVICE_CS", conns.Service, "DEVICE_ID", "go-dev"), nodeService)
	var sent struct{ MessageID string }
	node.expect(t, "SENT", &sent)
	m, err := d.ReceiveC2D(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.MessageID != sent.MessageID || string(m.Body) != "from node" || m.Ack != client.AckFull || m.Properties["k"] != "v" {
		t.Errorf("C2D from Node: id %q (want %q) body %q ack %q props %v", m.MessageID, sent.MessageID, m.Body, m.Ack, m.Properties)
	}
	if err := m.Complete(ctx); err != nil {
		t.Fatal(err)
	}
	var method struct {
		Status  int
		Payload string
	}
	node.expect(t, "METHOD", &method)
	mu.Lock()
	if method.Status != 200 || method.Payload != "pong" || string(payload) != `{"n":1}` {
		t.Errorf("method: %+v, the device saw %s", method, payload)
	}
	mu.Unlock()
	node.expect(t, "TWIN", nil)
	select {
	case u := <-desired:
		if n, _ := u.Patch["fromNode"].(json.Number).Int64(); n != 1 {
			t.Errorf("desired patch %v", u.Patch)
		}
	case <-ctx.Done():
		t.Fatal("no desired update")
	}
	var fb []client.FeedbackRecord
	node.expect(t, "FEEDBACK", &fb)
	if len(fb) != 1 || fb[0].OriginalMessageID != sent.MessageID || fb[0].StatusCode != client.FeedbackSuccess || fb[0].DeviceID != "go-dev" {
		t.Errorf("Node feedback: %+v", fb)
	}
}
