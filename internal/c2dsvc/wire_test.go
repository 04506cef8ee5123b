package c2dsvc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/c2dsvc"
	"amqphub/store/c2d"
)

// TestServiceToDeviceToFeedback is the seed flow with go-amqp on SASL
// PLAIN: a service sends with iothub-ack, a device receives (in both
// receiver settle modes) and completes, and the service reads the feedback
// batch. It checks the wire format on every hop.
func TestServiceToDeviceToFeedback(t *testing.T) {
	for _, tc := range []struct {
		name   string
		second bool
		module string
	}{
		{"rcv-settle-first", false, ""},
		{"rcv-settle-second", true, ""},
		{"module", false, "m1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startHub(t, c2dsvc.Config{FeedbackInterval: 50 * time.Millisecond})
			svc := serviceConn(t, s)
			snd := c2dSender(t, svc)
			to := deviceBound("d1", tc.module)
			uuid := goamqp.UUID{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 2, 3, 4, 5, 6, 7}
			corr := "corr-1"
			ctype := "application/json"
			expiry := time.Now().Add(30 * time.Minute).Truncate(time.Millisecond)
			m1 := c2dMessage(to, uuid, "full", `{"cmd":"on"}`)
			m1.Properties.CorrelationID = corr
			m1.Properties.ContentType = &ctype
			m1.Properties.AbsoluteExpiryTime = &expiry
			m1.ApplicationProperties["color"] = "blue"
			m1.ApplicationProperties["n"] = int64(7)
			sentAt := time.Now()
			send(t, snd, m1)
			send(t, snd, c2dMessage(to, "second", "positive", "two"))
			send(t, snd, c2dMessage(to, uint64(99), "none", "three"))

			dev := receiver(t, deviceConn(t, s, "d1", tc.module), to, 10, tc.second)
			got := receive(t, dev)
			if len(got.DeliveryTag) != 16 {
				t.Fatalf("delivery tag has %d bytes; want 16", len(got.DeliveryTag))
			}
			lt, ok := ann(got, c2dsvc.AnnLockToken).(string)
			if !ok {
				t.Fatalf("%s is %T; want string", c2dsvc.AnnLockToken, ann(got, c2dsvc.AnnLockToken))
			}
			tok, err := c2d.ParseLockToken(lt)
			if err != nil || !bytes.Equal(tok[:], got.DeliveryTag) {
				t.Fatalf("x-opt-lock-token %q (%v) is not the delivery tag %x read as a .NET GUID", lt, err, got.DeliveryTag)
			}
			if dc, ok := ann(got, c2dsvc.AnnDeliveryCount).(uint8); !ok || dc != 0 {
				t.Fatalf("%s = %T %v; want ubyte 0", c2dsvc.AnnDeliveryCount, ann(got, c2dsvc.AnnDeliveryCount), ann(got, c2dsvc.AnnDeliveryCount))
			}
			seq1, ok := ann(got, c2dsvc.AnnSequenceNumber).(uint64)
			if !ok || seq1 == 0 {
				t.Fatalf("%s = %T %v; want a ulong", c2dsvc.AnnSequenceNumber, ann(got, c2dsvc.AnnSequenceNumber), ann(got, c2dsvc.AnnSequenceNumber))
			}
			et, ok := ann(got, c2dsvc.AnnEnqueuedTime).(time.Time)
			if !ok || et.Before(sentAt.Add(-time.Second)) || et.After(time.Now().Add(time.Second)) {
				t.Fatalf("%s = %T %v; want a timestamp near %v", c2dsvc.AnnEnqueuedTime, ann(got, c2dsvc.AnnEnqueuedTime), ann(got, c2dsvc.AnnEnqueuedTime), sentAt)
			}
			p := got.Properties
			if p.MessageID != uuid || p.CorrelationID != corr || p.To == nil || *p.To != to ||
				p.ContentType == nil || *p.ContentType != ctype || p.AbsoluteExpiryTime == nil || !p.AbsoluteExpiryTime.Equal(expiry) {
				t.Fatalf("properties not passed through: %+v", p)
			}
			if got.ApplicationProperties["color"] != "blue" || got.ApplicationProperties["n"] != int64(7) || got.ApplicationProperties[c2dsvc.AckProperty] != "full" {
				t.Fatalf("application properties = %v", got.ApplicationProperties)
			}
			if string(got.GetData()) != `{"cmd":"on"}` {
				t.Fatalf("body = %q", got.GetData())
			}
			settle(t, dev, got, "accept")

			// In order, with increasing sequence numbers.
			g2, g3 := receive(t, dev), receive(t, dev)
			if g2.Properties.MessageID != "second" || g3.Properties.MessageID != uint64(99) {
				t.Fatalf("order: got %v then %v", g2.Properties.MessageID, g3.Properties.MessageID)
			}
			if s2, s3 := ann(g2, c2dsvc.AnnSequenceNumber).(uint64), ann(g3, c2dsvc.AnnSequenceNumber).(uint64); !(seq1 < s2 && s2 < s3) {
				t.Fatalf("sequence numbers %d, %d, %d do not increase", seq1, s2, s3)
			}
			settle(t, dev, g2, "accept")
			settle(t, dev, g3, "accept")

			fb := newFeedbackReader(t, svc)
			// The uuid's text is the feedback's originalMessageId; the
			// ack-none message gives none.
			fb.want(uuid.String()+":Success", "second:Success")
			b := fb.batches[0]
			if len(b.DeliveryTag) != 16 {
				t.Fatalf("feedback delivery tag has %d bytes", len(b.DeliveryTag))
			}
			if b.Properties == nil || b.Properties.ContentType == nil || *b.Properties.ContentType != c2d.FeedbackContentType {
				t.Fatalf("feedback content-type: %+v", b.Properties)
			}
			if string(b.Properties.UserID) != s.Options.HubName {
				t.Fatalf("feedback user-id = %q; want the hub name %q", b.Properties.UserID, s.Options.HubName)
			}
			if _, ok := ann(b, c2dsvc.AnnEnqueuedTime).(time.Time); !ok {
				t.Fatalf("feedback %s = %T; want a timestamp", c2dsvc.AnnEnqueuedTime, ann(b, c2dsvc.AnnEnqueuedTime))
			}
			var raw []map[string]any
			if err := json.Unmarshal(b.Data[0], &raw); err != nil {
				t.Fatal(err)
			}
			d1, err := s.Registry.GetDevice(context.Background(), "d1")
			if err != nil {
				t.Fatal(err)
			}
			wantGen := d1.GenerationID
			if tc.module != "" {
				m, err := s.Registry.GetModule(context.Background(), "d1", tc.module)
				if err != nil {
					t.Fatal(err)
				}
				wantGen = m.GenerationID
			}
			r0 := raw[0]
			if r0["deviceId"] != "d1" || r0["deviceGenerationId"] != wantGen || r0["statusCode"] != "Success" || r0["description"] != "Success" {
				t.Fatalf("feedback record %v", r0)
			}
			if ts, _ := r0["enqueuedTimeUtc"].(string); !strings.HasSuffix(ts, "Z") {
				t.Fatalf("enqueuedTimeUtc %q", ts)
			}
		})
	}
}

// TestRefusals sends messages the hub must refuse, each with the
// condition the SDKs map, and checks that the link stays usable.
func TestRefusals(t *testing.T) {
	s := startHub(t, c2dsvc.Config{MaxQueueDepth: 3, MaxMessageBytes: 4000})
	snd := c2dSender(t, serviceConn(t, s))
	for i := range 3 {
		send(t, snd, c2dMessage(deviceBound("d2", ""), fmt.Sprint("fill-", i), "", "x"))
	}
	for _, tc := range []struct {
		name string
		msg  *goamqp.Message
		cond goamqp.ErrCond
	}{
		{"unknown device", c2dMessage(deviceBound("nobody", ""), "a", "", "x"), goamqp.ErrCondNotFound},
		{"disabled device", c2dMessage(deviceBound("d4", ""), "a", "", "x"), goamqp.ErrCondNotFound},
		{"unknown module", c2dMessage(deviceBound("d1", "nope"), "a", "", "x"), goamqp.ErrCondNotFound},
		{"queue full", c2dMessage(deviceBound("d2", ""), "a", "", "x"), goamqp.ErrCondResourceLimitExceeded},
		{"too large", c2dMessage(deviceBound("d1", ""), "a", "", strings.Repeat("x", 4001)), goamqp.ErrCondMessageSizeExceeded},
		{"no to", c2dMessage("", "a", "", "x"), "com.microsoft:argument-error"},
		{"to is not devicebound", c2dMessage("/devices/d1/messages/events", "a", "", "x"), "com.microsoft:argument-error"},
		{"to is garbage", c2dMessage("not a path", "a", "", "x"), "com.microsoft:argument-error"},
		{"bad device id in to", c2dMessage("/devices/a%20b/messages/devicebound", "a", "", "x"), "com.microsoft:argument-error"},
		{"bad ack", c2dMessage(deviceBound("d1", ""), "a", "sometimes", "x"), "com.microsoft:argument-error"},
		{"ack not a string", func() *goamqp.Message {
			m := c2dMessage(deviceBound("d1", ""), "a", "", "x")
			m.ApplicationProperties = map[string]any{c2dsvc.AckProperty: int32(1)}
			return m
		}(), "com.microsoft:argument-error"},
		{"message id too long", c2dMessage(deviceBound("d1", ""), strings.Repeat("i", 1025), "", "x"), "com.microsoft:argument-error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := snd.Send(ctx, tc.msg, nil)
			if condOf(err) != tc.cond {
				t.Fatalf("send: err = %v; want rejected with %s", err, tc.cond)
			}
		})
	}
	// The link survived every refusal.
	send(t, snd, c2dMessage(deviceBound("d1", ""), "after", "", "x"))
	// The limit is on the encoded message: a body just under it passes.
	send(t, snd, c2dMessage(deviceBound("d3", ""), "edge", "", strings.Repeat("y", 3900)))
}

// TestOutcomes maps each device outcome to the store operation and its
// feedback, and checks that only abandons count deliveries.
func TestOutcomes(t *testing.T) {
	s := startHub(t, c2dsvc.Config{FeedbackInterval: 20 * time.Millisecond, MaxDeliveryCount: 3})
	svc := serviceConn(t, s)
	snd := c2dSender(t, svc)
	fb := newFeedbackReader(t, svc)
	dev := receiver(t, deviceConn(t, s, "d1", ""), deviceBound("d1", ""), 1, false)
	to := deviceBound("d1", "")

	next := func(id string, count uint8) *goamqp.Message {
		t.Helper()
		m := receive(t, dev)
		if m.Properties.MessageID != id || ann(m, c2dsvc.AnnDeliveryCount) != count {
			t.Fatalf("got %v with delivery count %v; want %s with %d", m.Properties.MessageID, ann(m, c2dsvc.AnnDeliveryCount), id, count)
		}
		return m
	}
	send(t, snd, c2dMessage(to, "rej", "full", "x"))
	settle(t, dev, next("rej", 0), "reject")
	fb.want("rej:Rejected")

	send(t, snd, c2dMessage(to, "undeliverable", "negative", "x"))
	settle(t, dev, next("undeliverable", 0), "modify-undeliverable")
	fb.want("undeliverable:Rejected")

	// released, modified{delivery-failed} and modified{} come back; only
	// the first two count, and the third abandon dead-letters.
	send(t, snd, c2dMessage(to, "bounce", "full", "x"))
	settle(t, dev, next("bounce", 0), "release")
	settle(t, dev, next("bounce", 1), "modify")
	settle(t, dev, next("bounce", 1), "modify-failed")
	settle(t, dev, next("bounce", 2), "release")
	fb.want("bounce:DeliveryCountExceeded")

	send(t, snd, c2dMessage(to, "ok", "negative", "x"))
	send(t, snd, c2dMessage(to, "ok2", "positive", "x"))
	settle(t, dev, next("ok", 0), "accept")
	settle(t, dev, next("ok2", 0), "accept")
	fb.want("ok2:Success") // negative asks for failures only
}

// TestPendingForLaterDevice: messages wait for a device that attaches
// later, and a device that attaches gets them in order, all within credit.
func TestPendingForLaterDevice(t *testing.T) {
	s := startHub(t, c2dsvc.Config{})
	snd := c2dSender(t, serviceConn(t, s))
	const n = 50
	for i := range n {
		send(t, snd, c2dMessage(deviceBound("d3", ""), fmt.Sprint("m", i), "", fmt.Sprint(i)))
	}
	dev := receiver(t, deviceConn(t, s, "d3", ""), deviceBound("d3", ""), 7, true)
	for i := range n {
		m := receive(t, dev)
		if m.Properties.MessageID != fmt.Sprint("m", i) {
			t.Fatalf("message %d is %v", i, m.Properties.MessageID)
		}
		settle(t, dev, m, "accept")
	}
}
