package eventhub_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

type mgmtClient struct {
	snd     *goamqp.Sender
	rcv     *goamqp.Receiver
	replyTo string
}

func newMgmt(t *testing.T, ctx context.Context, sess *goamqp.Session, addr string) *mgmtClient {
	t.Helper()
	snd, err := sess.NewSender(ctx, addr, nil)
	if err != nil {
		t.Fatalf("management sender: %v", err)
	}
	replyTo := "$management-reply-" + t.Name()
	rcv, err := sess.NewReceiver(ctx, addr, &goamqp.ReceiverOptions{
		TargetAddress:             replyTo,
		SettlementMode:            goamqp.ReceiverSettleModeFirst.Ptr(),
		RequestedSenderSettleMode: goamqp.SenderSettleModeSettled.Ptr(),
	})
	if err != nil {
		t.Fatalf("management receiver: %v", err)
	}
	return &mgmtClient{snd, rcv, replyTo}
}

func (c *mgmtClient) call(t *testing.T, ctx context.Context, id any, props map[string]any) *goamqp.Message {
	t.Helper()
	m := &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: id, ReplyTo: &c.replyTo},
		ApplicationProperties: props,
	}
	if err := c.snd.Send(ctx, m, nil); err != nil {
		t.Fatalf("send request: %v", err)
	}
	resp, err := c.rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatalf("receive reply: %v", err)
	}
	if resp.Properties == nil || fmt.Sprintf("%T %v", resp.Properties.CorrelationID, resp.Properties.CorrelationID) != fmt.Sprintf("%T %v", id, id) {
		t.Fatalf("correlation-id %#v, want %#v of the same type", resp.Properties, id)
	}
	return resp
}

func TestManagement(t *testing.T) {
	s := server.StartTest(t, nil)
	entries := seed(t, s.Log, 1, 4, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	hubName := s.Options.EventHubName
	ehKey := auth.DevIoTHubOwnerPrimaryKey
	// The Event Hubs SDKs sign with the key text and name the entity.
	entityToken := sas.Sign("amqps://"+s.Options.HostName+"/"+hubName, []byte(ehKey), auth.PolicyIoTHubOwner, time.Now().Add(time.Hour))
	badKey := base64.StdEncoding.EncodeToString([]byte("wrong key wrong key wrong key!!"))
	badToken := sas.Sign("amqps://"+s.Options.HostName+"/"+hubName, []byte(badKey), auth.PolicyIoTHubOwner, time.Now().Add(time.Hour))

	for _, addr := range []string{"$management", hubName + "/$management"} {
		t.Run(addr, func(t *testing.T) {
			c := newMgmt(t, ctx, sess, addr)
			resp := c.call(t, ctx, "req-1", map[string]any{"operation": "READ", "type": "com.microsoft:eventhub", "name": hubName, "security_token": entityToken})
			if got := resp.ApplicationProperties["status-code"]; got != int32(200) {
				t.Fatalf("status-code %#v (%T), want int32 200", got, got)
			}
			body, ok := resp.Value.(map[string]any)
			if !ok {
				t.Fatalf("body %T, want a map with string keys", resp.Value)
			}
			if body["name"] != hubName {
				t.Errorf("name %#v", body["name"])
			}
			if ct, ok := body["created_at"].(time.Time); !ok || ct.IsZero() || ct.After(time.Now()) {
				t.Errorf("created_at %#v, want a past timestamp", body["created_at"])
			}
			if body["partition_count"] != int32(4) {
				t.Errorf("partition_count %#v (%T), want int32 4", body["partition_count"], body["partition_count"])
			}
			if ids, ok := body["partition_ids"].([]string); !ok || fmt.Sprint(ids) != "[0 1 2 3]" {
				t.Errorf("partition_ids %#v (%T), want a string array 0..3", body["partition_ids"], body["partition_ids"])
			}
			if body["georeplication_factor"] != int32(1) {
				t.Errorf("georeplication_factor %#v", body["georeplication_factor"])
			}

			// A uuid message-id comes back as a uuid correlation-id.
			resp = c.call(t, ctx, goamqp.UUID{1, 2, 3}, map[string]any{"operation": "READ", "type": "com.microsoft:partition", "name": hubName, "partition": "1"})
			body, _ = resp.Value.(map[string]any)
			last := entries[len(entries)-1]
			want := map[string]any{
				"name":                          hubName,
				"partition":                     "1",
				"begin_sequence_number":         int64(0),
				"last_enqueued_sequence_number": last.Seq,
				"last_enqueued_offset":          fmt.Sprint(last.Offset),
				"last_enqueued_time_utc":        last.Enqueued(),
				"is_partition_empty":            false,
			}
			for k, v := range want {
				if fmt.Sprintf("%T %v", body[k], body[k]) != fmt.Sprintf("%T %v", v, v) {
					t.Errorf("%s: %#v (%T), want %#v (%T)", k, body[k], body[k], v, v)
				}
			}
			resp = c.call(t, ctx, uint64(9), map[string]any{"operation": "READ", "type": "com.microsoft:partition", "name": hubName, "partition": "3"})
			body, _ = resp.Value.(map[string]any)
			if body["is_partition_empty"] != true || body["last_enqueued_sequence_number"] != int64(-1) || body["last_enqueued_offset"] != "-1" {
				t.Errorf("empty partition: %#v", body)
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		c := newMgmt(t, ctx, sess, "$management")
		tests := []struct {
			name   string
			props  map[string]any
			status int32
			cond   string
		}{
			{"unknown partition", map[string]any{"operation": "READ", "type": "com.microsoft:partition", "name": hubName, "partition": "7"}, 404, "amqp:not-found"},
			{"unknown entity", map[string]any{"operation": "READ", "type": "com.microsoft:eventhub", "name": "other"}, 404, "amqp:not-found"},
			{"unknown type", map[string]any{"operation": "READ", "type": "com.microsoft:queue", "name": hubName}, 400, "amqp:not-allowed"},
			{"unknown operation", map[string]any{"operation": "DELETE", "type": "com.microsoft:eventhub", "name": hubName}, 400, "amqp:not-allowed"},
			{"bad security token", map[string]any{"operation": "READ", "type": "com.microsoft:eventhub", "name": hubName, "security_token": badToken}, 401, "amqp:unauthorized-access"},
			{"security token not a string", map[string]any{"operation": "READ", "type": "com.microsoft:eventhub", "name": hubName, "security_token": int64(5)}, 400, "amqp:not-allowed"},
		}
		for i, tc := range tests {
			resp := c.call(t, ctx, fmt.Sprint("e", i), tc.props)
			if got := resp.ApplicationProperties["status-code"]; got != tc.status {
				t.Errorf("%s: status-code %#v, want %d", tc.name, got, tc.status)
			}
			if got := resp.ApplicationProperties["error-condition"]; got != tc.cond {
				t.Errorf("%s: error-condition %#v, want %s", tc.name, got, tc.cond)
			}
			if d, _ := resp.ApplicationProperties["status-description"].(string); d == "" {
				t.Errorf("%s: no status-description", tc.name)
			}
		}
	})
}

// TestManagementRepliesWithoutCredit: a client that sends requests while
// granting its reply link no credit gets at most 16 replies held for it;
// the rest are dropped, and nothing waits once credit comes.
func TestManagementRepliesWithoutCredit(t *testing.T) {
	s := server.StartTest(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess := newSession(t, dialOwner(t, s))
	hubName := s.Options.EventHubName
	snd, err := sess.NewSender(ctx, "$management", nil)
	if err != nil {
		t.Fatal(err)
	}
	replyTo := "$management-reply-nocredit"
	rcv, err := sess.NewReceiver(ctx, "$management", &goamqp.ReceiverOptions{
		TargetAddress:             replyTo,
		SettlementMode:            goamqp.ReceiverSettleModeFirst.Ptr(),
		RequestedSenderSettleMode: goamqp.SenderSettleModeSettled.Ptr(),
		Credit:                    -1, // manual: none until IssueCredit
	})
	if err != nil {
		t.Fatal(err)
	}
	request := func(id string) {
		t.Helper()
		m := &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: id, ReplyTo: &replyTo},
			ApplicationProperties: map[string]any{"operation": "READ", "type": "com.microsoft:eventhub", "name": hubName},
		}
		if err := snd.Send(ctx, m, nil); err != nil {
			t.Fatalf("send request %s: %v", id, err)
		}
	}
	const sent = 40
	for i := range sent {
		request(fmt.Sprint("r", i))
	}
	// Every request was settled, so each was handled: 16 replies wait,
	// the others were dropped.
	waiting := func() int { return countStacks("eventhub.(*endpoint).sendReplyLater.func") }
	deadline := time.Now().Add(10 * time.Second)
	for waiting() < 16 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := waiting(); n != 16 {
		t.Fatalf("%d replies wait for credit, want 16", n)
	}
	if err := rcv.IssueCredit(sent + 1); err != nil {
		t.Fatal(err)
	}
	got := map[any]bool{}
	for range 16 {
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			t.Fatalf("receive held reply: %v", err)
		}
		got[m.Properties.CorrelationID] = true
	}
	// The next reply is that of a new request: the dropped ones never come.
	request("after")
	m, err := rcv.Receive(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Properties.CorrelationID != "after" {
		t.Fatalf("reply to %v after the 16 held ones, want the reply to the new request", m.Properties.CorrelationID)
	}
	if len(got) != 16 {
		t.Errorf("%d distinct held replies, want 16", len(got))
	}
	for waiting() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := waiting(); n != 0 {
		t.Errorf("%d reply goroutines left after credit came", n)
	}
}

// countStacks counts the goroutines whose stack mentions fragment.
func countStacks(fragment string) int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, fragment) {
			n++
		}
	}
	return n
}
