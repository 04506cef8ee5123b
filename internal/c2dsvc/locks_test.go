package c2dsvc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/c2dsvc"
	"amqphub/internal/registry"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

// TestLockExpiryRedelivers: a message the device does not settle is
// delivered again when its lock expires, without counting a delivery, and
// the first delivery's late settlement is ignored.
func TestLockExpiryRedelivers(t *testing.T) {
	s := startHub(t, c2dsvc.Config{LockDuration: 300 * time.Millisecond, FeedbackInterval: 20 * time.Millisecond})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	dev := receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 5, false)
	start := time.Now() // the lock is taken after this
	send(t, snd, c2dMessage(deviceBound("d1", ""), "slow", "full", "x"))
	first := receive(t, dev)
	again := receive(t, dev)
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("redelivered %v after the send; the lock lasts 300 ms", waited)
	}
	if again.Properties.MessageID != "slow" || ann(again, c2dsvc.AnnDeliveryCount) != uint8(0) ||
		ann(again, c2dsvc.AnnSequenceNumber) != ann(first, c2dsvc.AnnSequenceNumber) {
		t.Fatalf("redelivery: id %v count %v seq %v (first seq %v)", again.Properties.MessageID,
			ann(again, c2dsvc.AnnDeliveryCount), ann(again, c2dsvc.AnnSequenceNumber), ann(first, c2dsvc.AnnSequenceNumber))
	}
	if string(again.DeliveryTag) == string(first.DeliveryTag) {
		t.Fatal("the redelivery has the expired lock's token")
	}
	settle(t, dev, first, "reject") // lock lost: ignored
	settle(t, dev, again, "accept")
	fb.want("slow:Success")
}

// TestLinkLossGivesLocksBack: a message in flight on a link that goes away
// is given back, without counting a delivery, when the device attaches
// again (on a new connection or, if it has one, on its other link).
func TestLinkLossGivesLocksBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		// other attaches the device's second link before the first goes.
		other bool
	}{
		{"reattach", false},
		{"second link already attached", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startHub(t, c2dsvc.Config{LockDuration: time.Hour})
			snd := c2dSender(t, serviceConn(t, s))
			c1 := deviceConn(t, s, "d1", "")
			dev1 := receiver(t, c1, deviceBound("d1", ""), 5, false)
			send(t, snd, c2dMessage(deviceBound("d1", ""), "a", "", "x"))
			send(t, snd, c2dMessage(deviceBound("d1", ""), "b", "", "x"))
			receive(t, dev1)
			receive(t, dev1)
			var dev2 *goamqp.Receiver
			if tc.other {
				dev2 = receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 5, false)
			}
			c1.Close()
			if !tc.other {
				dev2 = receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 5, false)
			}
			// With a one-hour lock, only the release can bring them back.
			for _, id := range []string{"a", "b"} {
				m := receive(t, dev2)
				if m.Properties.MessageID != id || ann(m, c2dsvc.AnnDeliveryCount) != uint8(0) {
					t.Fatalf("got %v count %v; want %s count 0", m.Properties.MessageID, ann(m, c2dsvc.AnnDeliveryCount), id)
				}
				settle(t, dev2, m, "accept")
			}
		})
	}
}

// TestPresettledDevice: a device that asks for pre-settled deliveries gets
// each message once, completed as it is sent.
func TestPresettledDevice(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dev, err := session(t, deviceConn(t, s, "d2", "")).NewReceiver(ctx, deviceBound("d2", ""),
		&goamqp.ReceiverOptions{Credit: 5, RequestedSenderSettleMode: goamqp.SenderSettleModeSettled.Ptr()})
	if err != nil {
		t.Fatal(err)
	}
	send(t, snd, c2dMessage(deviceBound("d2", ""), "fire-and-forget", "full", "x"))
	if m := receive(t, dev); m.Properties.MessageID != "fire-and-forget" || len(m.DeliveryTag) != 16 {
		t.Fatalf("got %v tag %x", m.Properties.MessageID, m.DeliveryTag)
	}
	fb.want("fire-and-forget:Success")
}

// TestExpiry: a message whose absolute-expiry-time passes before it is
// delivered is dead-lettered with Expired; one already expired when sent
// too; an expiry beyond MaxTTL is clamped.
func TestExpiry(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond, MaxTTL: 2 * time.Second})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	soon := time.Now().Add(500 * time.Millisecond)
	past := time.Now().Add(-time.Minute)
	far := time.Now().Add(24 * time.Hour)
	for _, tc := range []struct {
		id  string
		exp *time.Time
	}{{"soon", &soon}, {"past", &past}, {"clamped", &far}} {
		m := c2dMessage(deviceBound("d3", ""), tc.id, "negative", "x")
		m.Properties.AbsoluteExpiryTime = tc.exp
		send(t, snd, m)
	}
	start := time.Now()
	fb.want("past:Expired", "soon:Expired", "clamped:Expired")
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the clamped message expired after %v; MaxTTL is 2 s", took)
	}
}

// TestFeedbackBatching: a full batch goes out at once, a partial one only
// after the interval since the link's previous batch; a batch the service
// releases, or leaves unsettled on a link that closes, comes back.
func TestFeedbackBatching(t *testing.T) {
	// complete sends n messages asking for positive feedback and has the
	// device complete them.
	complete := func(t *testing.T, snd *goamqp.Sender, dev *goamqp.Receiver, prefix string, n int) {
		t.Helper()
		for i := range n {
			send(t, snd, c2dMessage(deviceBound("d1", ""), fmt.Sprint(prefix, i), "positive", "x"))
		}
		for range n {
			settle(t, dev, receive(t, dev), "accept")
		}
	}
	setup := func(t *testing.T, interval time.Duration) (*server.Server, *goamqp.Conn, *goamqp.Sender, *goamqp.Receiver, *feedbackReader) {
		s := startHub(t, c2dsvc.Config{FeedbackInterval: interval, FeedbackBatchSize: 8, MaxQueueDepth: 100})
		svc := serviceConn(t, s)
		snd := c2dSender(t, svc)
		dev := receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 100, false)
		// The link's first batch goes at once and starts the interval.
		complete(t, snd, dev, "first", 1)
		fb := newFeedbackReader(t, svc)
		if recs := fb.next(); len(recs) != 1 {
			t.Fatalf("first batch has %d records; want 1", len(recs))
		}
		return s, svc, snd, dev, fb
	}

	t.Run("full batch at once", func(t *testing.T) {
		_, _, snd, dev, fb := setup(t, time.Hour)
		complete(t, snd, dev, "b", 11)
		if recs := fb.next(); len(recs) != 8 {
			t.Fatalf("batch of %d records; want 8", len(recs))
		}
		// The other 3 wait for the interval (an hour).
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if m, err := fb.r.Receive(ctx, nil); err == nil {
			t.Fatalf("a partial batch went before the interval: %s", m.GetData())
		}
	})

	t.Run("partial batch after the interval", func(t *testing.T) {
		const interval = 400 * time.Millisecond
		s, svc, snd, dev, fb := setup(t, interval)
		start := time.Now() // just after the previous batch went out
		complete(t, snd, dev, "p", 3)
		recs := fb.next()
		if took := time.Since(start); len(recs) != 3 || took < interval/2 {
			t.Fatalf("batch of %d records after %v; want 3 after about %v", len(recs), took, interval)
		}

		// Released: delivered again.
		complete(t, snd, dev, "r", 1)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		m, err := fb.r.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := fb.r.ReleaseMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
		if recs := fb.next(); len(recs) != 1 || recs[0].OriginalMessageID != "r0" {
			t.Fatalf("after release: %+v", recs)
		}

		// Unsettled on a link that closes: available to the next link.
		complete(t, snd, dev, "u", 1)
		if m, err = fb.r.Receive(ctx, nil); err != nil || !strings.Contains(string(m.GetData()), `"u0"`) {
			t.Fatalf("feedback %s, %v", m.GetData(), err)
		}
		fb.r.Close(ctx)
		svc.Close()
		fb2 := newFeedbackReader(t, serviceConn(t, s))
		fb2.want("u0:Success")
	})
}

// TestFileNotifications: the address attaches and stays empty.
func TestFileNotifications(t *testing.T) {
	s := startHub(t, c2dsvc.Config{})
	r := receiver(t, serviceConn(t, s), "/messages/serviceBound/filenotifications", 10, false)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if m, err := r.Receive(ctx, nil); err == nil {
		t.Fatalf("file notification %v; there is no file upload", m)
	}
	// A device may not attach it.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	_, err := session(t, deviceConn(t, s, "d1", "")).NewReceiver(ctx2, "/messages/serviceBound/filenotifications", nil)
	if condOf(err) != goamqp.ErrCondUnauthorizedAccess {
		t.Fatalf("device attach: %v; want unauthorized-access", err)
	}
}

// restDo calls the hub's REST API with a service token.
func restDo(t *testing.T, s *server.Server, method, path string, rights string) (int, []byte) {
	t.Helper()
	policy, key := auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey
	if rights == "registryRead" {
		policy, key = auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey
	}
	req, err := http.NewRequest(method, "https://"+s.HTTPSAddr+path+"?api-version=2021-04-12", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", sas.Sign(s.Options.HostName, decodeKey(t, key), policy, time.Now().Add(time.Hour)))
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: s.ClientTLS}, Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestPurge: DELETE /devices/{id}/commands purges with Purged feedback and
// IoT Hub's result; unknown devices and insufficient rights are refused.
func TestPurge(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	dev := receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 1, false)
	for _, id := range []string{"p1", "p2", "p3"} {
		send(t, snd, c2dMessage(deviceBound("d1", ""), id, "full", "x"))
	}
	locked := receive(t, dev) // p1 is locked: purged too
	code, body := restDo(t, s, http.MethodDelete, "/devices/d1/commands", "")
	if code != http.StatusOK {
		t.Fatalf("purge: %d %s", code, body)
	}
	var res map[string]any
	if err := json.Unmarshal(body, &res); err != nil || res["totalMessagesPurged"] != float64(3) || res["deviceId"] != "d1" {
		t.Fatalf("purge result %s (%v)", body, err)
	}
	fb.want("p1:Purged", "p2:Purged", "p3:Purged")
	settle(t, dev, locked, "accept") // the message is gone: ignored
	if code, body := restDo(t, s, http.MethodDelete, "/devices/d1/commands", ""); code != http.StatusOK || !strings.Contains(string(body), `"totalMessagesPurged":0`) {
		t.Fatalf("second purge: %d %s", code, body)
	}
	if code, body := restDo(t, s, http.MethodDelete, "/devices/nobody/commands", ""); code != http.StatusNotFound || !strings.Contains(string(body), "DeviceNotFound") {
		t.Fatalf("purge of an unknown device: %d %s", code, body)
	}
	if code, _ := restDo(t, s, http.MethodDelete, "/devices/d1/commands", "registryRead"); code != http.StatusUnauthorized {
		t.Fatalf("purge with registryRead: %d; want 401", code)
	}
}

// TestRecreatedDevice: a device deleted and created again under the same
// id does not get the messages sent to its predecessor, nor does the
// service get feedback for them.
func TestRecreatedDevice(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond, ReconcileInterval: -1})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	send(t, snd, c2dMessage(deviceBound("d2", ""), "old", "full", "x"))
	ctx := context.Background()
	if err := s.Registry.DeleteDevice(ctx, "d2", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Registry.CreateDevice(ctx, registry.Device{DeviceID: "d2"}); err != nil {
		t.Fatal(err)
	}
	send(t, snd, c2dMessage(deviceBound("d2", ""), "new", "full", "x"))
	dev := receiver(t, deviceConn(t, s, "d2", ""), deviceBound("d2", ""), 5, false)
	m := receive(t, dev)
	if m.Properties.MessageID != "new" {
		t.Fatalf("the re-created device got %v", m.Properties.MessageID)
	}
	settle(t, dev, m, "accept")
	newFeedbackReader(t, svc).want("new:Success")
}

// TestMessageTooLargeForDevice: a message over the device link's
// max-message-size detaches the link with message-size-exceeded and counts
// a delivery, so it ends as DeliveryCountExceeded instead of blocking the
// queue; the next message then gets through.
func TestMessageTooLargeForDevice(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond, MaxDeliveryCount: 2})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	send(t, snd, c2dMessage(deviceBound("d1", ""), "huge", "full", strings.Repeat("h", 2000)))
	send(t, snd, c2dMessage(deviceBound("d1", ""), "small", "full", "s"))
	conn := deviceConn(t, s, "d1", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for attempt := range 2 {
		r, err := session(t, conn).NewReceiver(ctx, deviceBound("d1", ""), &goamqp.ReceiverOptions{Credit: 5, MaxMessageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Receive(ctx, nil); condOf(err) != goamqp.ErrCondMessageSizeExceeded {
			t.Fatalf("attempt %d: receive: %v; want the link detached with message-size-exceeded", attempt, err)
		}
	}
	fb.want("huge:DeliveryCountExceeded")
	r := receiver(t, conn, deviceBound("d1", ""), 5, false)
	m := receive(t, r)
	if m.Properties.MessageID != "small" {
		t.Fatalf("got %v; want small", m.Properties.MessageID)
	}
	settle(t, r, m, "accept")
	fb.want("small:Success")
}

// TestWrongDirection: each C2D address is attached in one direction only.
func TestWrongDirection(t *testing.T) {
	s := startHub(t, c2dsvc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc := session(t, serviceConn(t, s))
	dev := session(t, deviceConn(t, s, "d1", ""))
	for _, tc := range []struct {
		name   string
		attach func() error
	}{
		{"service receiving on /messages/devicebound", func() error {
			_, err := svc.NewReceiver(ctx, "/messages/devicebound", nil)
			return err
		}},
		{"service sending on feedback", func() error {
			_, err := svc.NewSender(ctx, "/messages/serviceBound/feedback", nil)
			return err
		}},
		{"service sending on file notifications", func() error {
			_, err := svc.NewSender(ctx, "/messages/serviceBound/filenotifications", nil)
			return err
		}},
		{"device sending on its devicebound address", func() error {
			_, err := dev.NewSender(ctx, deviceBound("d1", ""), nil)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.attach(); condOf(err) != goamqp.ErrCondNotAllowed {
				t.Fatalf("attach: %v; want not-allowed", err)
			}
		})
	}
}

// TestLockLostInModeSecond: a device receiving in rcv-settle-mode second
// (the C# SDK) that completes a message after its lock expired is answered
// with com.microsoft:message-lock-lost; completing the redelivery works,
// and so does a completion within the lock.
func TestLockLostInModeSecond(t *testing.T) {
	s := startHub(t, c2dsvc.Config{LockDuration: 300 * time.Millisecond, FeedbackInterval: 20 * time.Millisecond})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	dev := receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 5, true)
	send(t, snd, c2dMessage(deviceBound("d1", ""), "late", "full", "x"))
	first := receive(t, dev)
	again := receive(t, dev) // the lock expired: delivered again
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := dev.AcceptMessage(ctx, first)
	if condOf(err) != c2dsvc.CondMessageLockLost {
		t.Fatalf("completing with an expired lock: %v, want %s", err, c2dsvc.CondMessageLockLost)
	}
	settle(t, dev, again, "accept")
	fb.want("late:Success")
	send(t, snd, c2dMessage(deviceBound("d1", ""), "inTime", "full", "y"))
	settle(t, dev, receive(t, dev), "reject")
	fb.want("inTime:Rejected")
}
