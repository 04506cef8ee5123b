package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/server"
	"amqphub/internal/testutil"
)

const cliDevKey = "Y2xpLXRlc3QtZGV2aWNlLWtleS0wMTIzNDU2Nzg5YWJj"

func startCLIHub(t *testing.T) *server.Server {
	t.Helper()
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "dev1", PrimaryKey: cliDevKey}, {ID: "dev2", PrimaryKey: cliDevKey}}
		o.C2D.FeedbackInterval = 20 * time.Millisecond
		o.C2D.NoSync = true
	})
	// One HTTPS request before any AMQPS handshake: the hub shares its
	// *tls.Config between both listeners and the HTTPS server writes to
	// it as it starts, which the race detector reports against a
	// handshake (a hub issue).
	tr := &http.Transport{TLSClientConfig: s.ClientTLS}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + s.HTTPSAddr + "/")
	if err != nil {
		t.Fatalf("HTTPS warm-up: %v", err)
	}
	resp.Body.Close()
	return s
}

// clientCmd runs an AMQP command against s; stdin is empty.
func clientCmd(t *testing.T, s *server.Server, args ...string) (string, error) {
	t.Helper()
	var out, errOut testutil.LockedBuffer
	err := runClientCmd(s, strings.NewReader(""), &out, &errOut, args...)
	return out.String(), err
}

func runClientCmd(s *server.Server, stdin *strings.Reader, stdout, stderr *testutil.LockedBuffer, args ...string) error {
	hub := []string{
		"--hub", "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=" + auth.DevIoTHubOwnerPrimaryKey,
		"--ca", s.CAFile,
		"--rest-url", "https://" + s.HTTPSAddr,
		"--amqp-addr", s.AMQPSAddr,
	}
	switch args[0] {
	case "send":
		return sendCmd(append(hub, args[1:]...), stdin, stdout, stderr)
	case "monitor":
		return monitorCmd(append(hub, args[1:]...), stdout, stderr)
	case "c2d":
		return c2dCmd(append([]string{args[1]}, append(hub, args[2:]...)...), stdin, stdout, stderr)
	case "feedback":
		return feedbackCmd(append(hub, args[1:]...), stdout, stderr)
	case "twin":
		return twinCmd(append([]string{args[1]}, append(hub, args[2:]...)...), stdout, stderr)
	case "method":
		return methodCmd(append([]string{args[1]}, append(hub, args[2:]...)...), stdout, stderr)
	}
	return fmt.Errorf("no such command %q", args[0])
}

// jsonLines parses newline-delimited JSON objects.
func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestSendAndMonitor(t *testing.T) {
	s := startCLIHub(t)
	out, err := clientCmd(t, s, "send", "--device", "dev1", "--count", "5", "--body", "msg {{n}}", "--property", "site=lab", "--quiet")
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	if !strings.HasPrefix(out, "sent 5 messages as device dev1 in ") {
		t.Fatalf("send printed %q", out)
	}
	out, err = clientCmd(t, s, "monitor", "--from", "earliest", "--count", "5", "--device", "dev1")
	if err != nil {
		t.Fatalf("monitor: %v", err)
	}
	for i := range 5 {
		if !strings.Contains(out, "dev1 [partition ") || !strings.Contains(out, fmt.Sprintf("] msg %d\n", i)) {
			t.Fatalf("monitor output lacks msg %d:\n%s", i, out)
		}
	}
	if strings.Count(out, "    properties: site=lab\n") != 5 {
		t.Errorf("monitor output lacks the properties:\n%s", out)
	}

	// Batches, parallel senders, a file body and --json.
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, []byte(`{"from":"file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = clientCmd(t, s, "send", "--device", "dev2", "--count", "7", "--batch", "3", "--parallel", "2", "--file", file, "--json")
	if err != nil {
		t.Fatalf("send --batch: %v", err)
	}
	var res struct {
		DeviceID string `json:"deviceId"`
		Sent     int    `json:"sent"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Sent != 7 || res.DeviceID != "dev2" {
		t.Fatalf("send --json: %v %s", err, out)
	}
	out, err = clientCmd(t, s, "monitor", "--from", "earliest", "--count", "7", "--device", "dev2", "--json", "--system-properties")
	if err != nil {
		t.Fatal(err)
	}
	lines := jsonLines(t, out)
	if len(lines) != 7 {
		t.Fatalf("%d JSON lines, want 7:\n%s", len(lines), out)
	}
	for _, l := range lines {
		body, _ := l["body"].(map[string]any)
		sys, _ := l["systemProperties"].(map[string]any)
		if l["deviceId"] != "dev2" || body["from"] != "file" || l["sequenceNumber"] == nil || l["enqueuedTime"] == nil || sys["iothub-connection-device-id"] != "dev2" {
			t.Fatalf("event %v", l)
		}
	}

	// --from latest shows only what is sent after it starts, --from a
	// time what was enqueued since.
	var mout, merr testutil.LockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- runClientCmd(s, strings.NewReader(""), &mout, &merr, "monitor", "--count", "1", "--device", "dev1", "--timeout", "20s")
	}()
	waitUntil(t, "monitor to start", func() bool { return strings.Contains(merr.String(), "monitoring 4 partitions") })
	since := time.Now().UTC()
	if _, err := clientCmd(t, s, "send", "--device", "dev1", "--body", "live"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("monitor --from latest: %v", err)
	}
	if !strings.Contains(mout.String(), "] live\n") || strings.Contains(mout.String(), "msg 0") {
		t.Fatalf("monitor --from latest printed:\n%s", mout.String())
	}
	out, err = clientCmd(t, s, "monitor", "--from", since.Add(-time.Millisecond).Format(time.RFC3339Nano), "--count", "1", "--device", "dev1")
	if err != nil || !strings.Contains(out, "] live\n") {
		t.Fatalf("monitor --from TIME: %v\n%s", err, out)
	}

	// A long send shows a progress line.
	var pout, perr testutil.LockedBuffer
	if err := runClientCmd(s, strings.NewReader(""), &pout, &perr, "send", "--device", "dev1", "--count", "12", "--rate", "8"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(perr.String(), "\rsent ") || !strings.Contains(perr.String(), "/12 (") {
		t.Errorf("no progress line on stderr: %q", perr.String())
	}
	// Standard input as the body.
	var sout, serr testutil.LockedBuffer
	if err := runClientCmd(s, strings.NewReader("from stdin"), &sout, &serr, "send", "--device", "dev2", "--file", "-"); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClientCommandErrors(t *testing.T) {
	s := startCLIHub(t)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"send"}, "give --device ID"},
		{[]string{"send", "--device", "nobody"}, "amqphub device create nobody"},
		{[]string{"send", "--device", "dev1", "--count", "0"}, "at least 1"},
		{[]string{"send", "--device", "dev1", "--body", "x", "--file", "y"}, "not both"},
		{[]string{"send", "--device-connection-string", "HostName=localhost;DeviceId=dev1;SharedAccessKey=" + auth.DevDevicePrimaryKey}, "refused the credentials"},
		{[]string{"monitor", "--from", "yesterday"}, "want earliest, latest"},
		{[]string{"monitor", "--consumer-group", "nope", "--timeout", "10s"}, "nope"},
		{[]string{"c2d", "send"}, "usage: amqphub c2d send"},
		{[]string{"c2d", "send", "nobody", "--body", "x"}, "amqphub device create nobody"},
		{[]string{"c2d", "send", "dev1", "--ack", "always"}, "want none, positive"},
		{[]string{"c2d", "receive", "--abandon", "--reject", "--device", "dev1"}, "not both"},
		{[]string{"twin", "update", "dev1"}, "needs --desired"},
		{[]string{"twin", "update", "dev1", "--desired", "[1]"}, "must be a JSON object"},
		{[]string{"twin", "show", "nobody"}, "amqphub device create nobody"},
		{[]string{"twin", "update", "dev1", "--tags", `{"a":1}`, "--etag", `"old"`}, "the twin changed"},
		{[]string{"method", "invoke", "dev1"}, "usage: amqphub method invoke"},
		{[]string{"method", "invoke", "dev1", "m", "--payload", "{bad"}, "--payload must be JSON"},
		{[]string{"method", "invoke", "dev1", "m"}, "not connected or has no direct-method handler"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := clientCmd(t, s, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// A hub that is not there: the error says what to do.
	var out, errOut testutil.LockedBuffer
	err := sendCmd([]string{"--amqp-addr", "127.0.0.1:1", "--ca", s.CAFile, "--device-connection-string", "HostName=localhost;DeviceId=dev1;SharedAccessKey=" + cliDevKey},
		strings.NewReader(""), &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "is the hub running?") {
		t.Fatalf("no hub: %v", err)
	}
}

func TestC2DAndFeedbackCommands(t *testing.T) {
	s := startCLIHub(t)
	out, err := clientCmd(t, s, "c2d", "send", "dev1", "--body", "hello", "--ack", "full", "--property", "cmd=blink", "--json")
	if err != nil {
		t.Fatalf("c2d send: %v", err)
	}
	var sent struct {
		MessageID string `json:"messageId"`
		Ack       string `json:"ack"`
	}
	if err := json.Unmarshal([]byte(out), &sent); err != nil || sent.MessageID == "" || sent.Ack != "full" {
		t.Fatalf("c2d send --json: %v %s", err, out)
	}
	out, err = clientCmd(t, s, "c2d", "send", "dev1", "--body", "second", "--message-id", "m-2", "--ack", "negative")
	if err != nil || !strings.Contains(out, "queued message m-2 for dev1 (ack negative)") || !strings.Contains(out, "amqphub feedback") {
		t.Fatalf("c2d send: %v\n%s", err, out)
	}
	out, err = clientCmd(t, s, "c2d", "receive", "--device", "dev1", "--count", "1")
	if err != nil {
		t.Fatalf("c2d receive: %v", err)
	}
	if !strings.Contains(out, "message "+sent.MessageID+": hello\n") || !strings.Contains(out, "properties: cmd=blink") || !strings.Contains(out, "completed (ack full, delivery 1)") {
		t.Fatalf("c2d receive printed:\n%s", out)
	}
	out, err = clientCmd(t, s, "c2d", "receive", "--device", "dev1", "--count", "1", "--reject", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if l := jsonLines(t, out); len(l) != 1 || l[0]["messageId"] != "m-2" || l[0]["outcome"] != "rejected" || l[0]["body"] != "second" {
		t.Fatalf("c2d receive --reject --json: %s", out)
	}
	out, err = clientCmd(t, s, "feedback", "--count", "2", "--json", "--timeout", "20s")
	if err != nil {
		t.Fatalf("feedback: %v", err)
	}
	status := map[string]string{}
	for _, l := range jsonLines(t, out) {
		status[l["originalMessageId"].(string)] = l["statusCode"].(string)
	}
	if status[sent.MessageID] != "Success" || status["m-2"] != "Rejected" {
		t.Fatalf("feedback: %v\n%s", status, out)
	}
	// Nothing more arrives: --timeout ends the wait without an error.
	start := time.Now()
	out, err = clientCmd(t, s, "feedback", "--timeout", "300ms")
	if err != nil || out != "" || time.Since(start) > 10*time.Second {
		t.Fatalf("idle feedback: %v %q", err, out)
	}
}

func TestTwinAndMethodCommands(t *testing.T) {
	s := startCLIHub(t)
	out, err := clientCmd(t, s, "twin", "update", "dev1", "--desired", `{"interval":5}`, "--tags", `{"site":"lab"}`)
	if err != nil {
		t.Fatalf("twin update: %v", err)
	}
	if !strings.Contains(out, "device:     dev1") || !strings.Contains(out, `"interval": 5`) || !strings.Contains(out, `"site": "lab"`) {
		t.Fatalf("twin update printed:\n%s", out)
	}
	if _, err := clientCmd(t, s, "twin", "update", "dev1", "--reported", `{"fw":"2.0"}`); err != nil {
		t.Fatalf("twin update --reported: %v", err)
	}
	out, err = clientCmd(t, s, "twin", "show", "dev1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var tw client.Twin
	if err := json.Unmarshal([]byte(out), &tw); err != nil {
		t.Fatal(err)
	}
	if tw.Properties.Reported["fw"] != "2.0" || tw.Properties.Desired["interval"] != float64(5) || tw.Tags["site"] != "lab" {
		t.Fatalf("twin show --json: %s", out)
	}

	// A device answers direct methods.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := s.DeviceConnectionString(ctx, "dev1")
	if err != nil {
		t.Fatal(err)
	}
	d, err := client.NewDeviceClient(cs, &client.DeviceOptions{TLSConfig: s.ClientTLS, Address: s.AMQPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.HandleMethod(ctx, "echo", func(_ context.Context, r client.MethodRequest) (client.MethodResponse, error) {
		return client.MethodResponse{Status: 201, Payload: r.Payload}, nil
	}); err != nil {
		t.Fatal(err)
	}
	out, err = clientCmd(t, s, "method", "invoke", "dev1", "echo", "--payload", `{"a":[1,2]}`)
	if err != nil {
		t.Fatalf("method invoke: %v", err)
	}
	if !strings.Contains(out, "status: 201\n") || !strings.Contains(out, `"a": [`) {
		t.Fatalf("method invoke printed:\n%s", out)
	}
	out, err = clientCmd(t, s, "method", "invoke", "dev1", "echo", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var res client.MethodResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Status != 201 || string(res.Payload) != "null" {
		t.Fatalf("method invoke --json: %v %s", err, out)
	}
}
