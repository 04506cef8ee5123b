package jetstream

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"amqphub/internal/natstest"
	"amqphub/store/partlog"
)

func TestParseAck(t *testing.T) {
	p := &partition{id: 3, stream: "S_3"}
	tests := []struct {
		name    string
		data    string
		header  nats.Header
		wantSeq uint64
		wantErr string
	}{
		{"plain", `{"stream":"S_3","seq":42}`, nil, 42, ""},
		{"with domain", `{"stream":"S_3","seq":43,"domain":"hub"}`, nil, 43, ""},
		{"spaces", `{"stream": "S_3", "seq": 44}`, nil, 44, ""},
		{"duplicate", `{"stream":"S_3","seq":45,"duplicate":true}`, nil, 0, "unexpected"},
		{"other stream", `{"stream":"S_30","seq":46}`, nil, 0, "unexpected"},
		{"seq zero", `{"stream":"S_3","seq":0}`, nil, 0, "unexpected"},
		{"seq not a number", `{"stream":"S_3","seq":-1}`, nil, 0, "undecodable"},
		{"api error", `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, nil, 0, "maximum messages exceeded"},
		{"truncated", `{"stream":"S_3","seq":4`, nil, 0, "undecodable"},
		{"empty", ``, nil, 0, "undecodable"},
		{"no responders", ``, nats.Header{"Status": []string{"503"}}, 0, "no responders"},
		{"other status", ``, nats.Header{"Status": []string{"408"}, "Description": []string{"timeout"}}, 0, "status 408 timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ack, err := p.parseAck(&nats.Msg{Data: []byte(tc.data), Header: tc.header})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseAck(%s) = %+v, %v; want an error mentioning %q", tc.data, ack, err, tc.wantErr)
				}
				return
			}
			if err != nil || ack.Seq != tc.wantSeq || ack.Stream != p.stream {
				t.Fatalf("parseAck(%s) = %+v, %v; want seq %d", tc.data, ack, err, tc.wantSeq)
			}
		})
	}
}

// TestFailInFlight: appends whose server went away fail at once with
// ErrDisconnected when FailInFlight is called, not after AckTimeout.
func TestFailInFlight(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s.ClientURL())
	l := openTest(t, nc, Options{Partitions: 2, AckTimeout: time.Hour})
	mustAppend(t, l, 0, []byte("stored"))
	s.Shutdown()
	s.WaitForShutdown()
	waitFor(t, "the client to notice", func() bool { return !nc.IsConnected() })
	const n = 10
	res := make(chan error, n)
	for i := range n {
		if err := l.AppendAsync(i%2, []byte("lost"), func(_ partlog.Entry, err error) { res <- err }); err != nil {
			t.Fatalf("AppendAsync = %v", err)
		}
	}
	select {
	case err := <-res:
		t.Fatalf("an append completed before FailInFlight: %v", err)
	default:
	}
	l.FailInFlight(errors.New("test disconnect"))
	for range n {
		select {
		case err := <-res:
			if !errors.Is(err, ErrDisconnected) {
				t.Fatalf("done = %v, want ErrDisconnected", err)
			}
		case <-testCtx(t).Done():
			t.Fatal("an append never completed")
		}
	}
}
