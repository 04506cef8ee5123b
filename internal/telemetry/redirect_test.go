package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/internal/hub"
	"amqphub/internal/server"
)

// attachReceiver attaches a receiver and, if the attach succeeds, waits
// for its first message or error: the hub (like IoT Hub) completes the
// attach and then detaches with the redirect.
func attachReceiver(ctx context.Context, sess *goamqp.Session, source string) error {
	rcv, err := sess.NewReceiver(ctx, source, nil)
	if err != nil {
		return err
	}
	_, err = rcv.Receive(ctx, nil)
	return err
}

func TestRedirect(t *testing.T) {
	s := startHub(t, func(o *server.Options) { o.EventHubName = "iothub-ehub-amqphub-1-abc" })
	host, eh := s.Options.HostName, s.Options.EventHubName
	port := portOf(s.AMQPSAddr)
	user, token := ownerLogin(t, s)
	owner := dial(t, s.AMQPAddr, user, token)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := owner.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("amqps://%s:%d/%s", host, port, eh)
	tests := []struct {
		source  string
		address string // redirect address, or "" for a refusal with cond
		cond    goamqp.ErrCond
	}{
		{"/messages/events/ConsumerGroups/$Default/Partitions/0", base + "/ConsumerGroups/$Default/Partitions/0", ""},
		{"amqps://" + host + "/messages/events/$management", base + "/$management", ""},
		{"/messages/events/$management", base + "/$management", ""},
		{"/MESSAGES/Events/consumergroups/cg%201/partitions/03", base + "/ConsumerGroups/cg%201/Partitions/3", ""},
		{"/messages/events/ConsumerGroups/$Default/Partitions/4", "", goamqp.ErrCondNotFound},
		{"/messages/events/ConsumerGroups/$Default/Partitions/-1", "", goamqp.ErrCondNotFound},
		{"/messages/events/ConsumerGroups/$Default/Partitions/zero", "", goamqp.ErrCondNotFound},
		{"/messages/events/ConsumerGroups//Partitions/0", "", goamqp.ErrCondNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.source, func(t *testing.T) {
			err := attachReceiver(ctx, sess, tc.source)
			if tc.address == "" {
				if condOf(err) != tc.cond {
					t.Fatalf("got %v, want %s", err, tc.cond)
				}
				return
			}
			var le *goamqp.LinkError
			if !errors.As(err, &le) || le.RemoteErr == nil {
				t.Fatalf("got %T %v, want a *goamqp.LinkError", err, err)
			}
			re := le.RemoteErr
			if re.Condition != "amqp:link:redirect" {
				t.Fatalf("condition %s", re.Condition)
			}
			want := map[string]any{"hostname": host, "network-host": host, "port": int32(port), "address": tc.address}
			for k, v := range want {
				if got := re.Info[k]; got != v {
					t.Errorf("info %s = %#v (%T), want %#v (%T)", k, got, got, v, v)
				}
			}
			// The address routes to the Event-Hub-compatible endpoint.
			r := hub.ParseAddress(tc.address, eh)
			if r.Kind != hub.KindEHManagement && r.Kind != hub.KindEHPartition {
				t.Errorf("redirect address %q parses as %v", tc.address, r.Kind)
			}
		})
	}
	// The SDK samples learn the entity name from the $management address.
	err = attachReceiver(ctx, sess, "/messages/events/$management")
	var le *goamqp.LinkError
	if !errors.As(err, &le) {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`:\d+/(.*)/\$management`).FindStringSubmatch(le.RemoteErr.Info["address"].(string))
	if m == nil || m[1] != eh {
		t.Errorf("entity from the redirect address: %q, want %q", m, eh)
	}

	// Partitions are read-only.
	if _, err := sess.NewSender(ctx, "/messages/events/ConsumerGroups/$Default/Partitions/0", nil); condOf(err) != goamqp.ErrCondNotAllowed {
		t.Errorf("sender on a partition: %v, want %s", err, goamqp.ErrCondNotAllowed)
	}

	// A device may not read the hub's events.
	user, token = deviceLogin(t, s, "d1", "")
	dsess, err := dial(t, s.AMQPAddr, user, token).NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"/messages/events/ConsumerGroups/$Default/Partitions/0", "/messages/events/$management"} {
		if err := attachReceiver(ctx, dsess, src); condOf(err) != goamqp.ErrCondUnauthorizedAccess {
			t.Errorf("device reading %s: %v, want %s", src, err, goamqp.ErrCondUnauthorizedAccess)
		}
	}
}

func TestRedirectPlainOnly(t *testing.T) {
	s := startHub(t, func(o *server.Options) { o.AMQPSAddr = "off" })
	user, token := ownerLogin(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, err := dial(t, s.AMQPAddr, user, token).NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = attachReceiver(ctx, sess, "/messages/events/ConsumerGroups/$Default/Partitions/1")
	var le *goamqp.LinkError
	if !errors.As(err, &le) || le.RemoteErr == nil || le.RemoteErr.Condition != "amqp:link:redirect" {
		t.Fatalf("got %v, want a redirect", err)
	}
	port := portOf(s.AMQPAddr)
	want := fmt.Sprintf("amqp://%s:%d/%s/ConsumerGroups/$Default/Partitions/1", s.Options.HostName, port, s.Options.EventHubName)
	if le.RemoteErr.Info["address"] != want || le.RemoteErr.Info["port"] != int32(port) {
		t.Errorf("info %v, want address %s", le.RemoteErr.Info, want)
	}
}
