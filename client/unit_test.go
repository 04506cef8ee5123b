package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

func TestAMQPURL(t *testing.T) {
	tests := []struct {
		host, addr, want string
		bad              bool
	}{
		{"hub.azure-devices.net", "", "amqps://hub.azure-devices.net:5671", false},
		{"localhost", "127.0.0.1:6000", "amqps://127.0.0.1:6000", false},
		{"localhost", "amqp://127.0.0.1:5672", "amqp://127.0.0.1:5672", false},
		{"localhost", "amqps://[::1]:5671/ignored", "amqps://[::1]:5671", false},
		{"localhost", "http://x:1", "", true},
		{"localhost", "no-port", "", true},
		{"localhost", "amqp://", "", true},
	}
	for _, tc := range tests {
		got, err := amqpURL(tc.host, tc.addr)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("amqpURL(%q, %q) = %q, %v; want %q (error %v)", tc.host, tc.addr, got, err, tc.want, tc.bad)
		}
	}
}

func TestErrorMapping(t *testing.T) {
	remote := func(cond string) error {
		return amqpErr("op", &goamqp.LinkError{RemoteErr: &goamqp.Error{Condition: goamqp.ErrCond(cond), Description: "why"}})
	}
	tests := []struct {
		name      string
		err       error
		is        error
		retryable bool
	}{
		{"unauthorized", remote("amqp:unauthorized-access"), ErrUnauthorized, false},
		{"not found", remote("amqp:not-found"), ErrDeviceNotFound, false},
		{"queue depth", remote("amqp:resource-limit-exceeded"), ErrQueueDepthExceeded, false},
		{"throttled", remote("com.microsoft:device-container-throttled"), ErrThrottled, true},
		{"quota", remote("com.microsoft:quota-exceeded"), ErrQuotaExceeded, false},
		{"too large", remote("amqp:link:message-size-exceeded"), ErrMessageTooLarge, false},
		{"lock lost", remote("com.microsoft:message-lock-lost"), ErrLockLost, false},
		{"server timeout", remote("com.microsoft:timeout"), ErrTimeout, true},
		{"forced", remote("amqp:connection:forced"), ErrConnectionLost, true},
		{"detach forced", remote("amqp:link:detach-forced"), ErrConnectionLost, true},
		{"precondition", remote("com.microsoft:precondition-failed"), ErrPreconditionFailed, false},
		{"internal", remote("amqp:internal-error"), nil, true},
		{"session ended", remote("amqp:session:unattached-handle"), nil, true},
		{"not implemented", remote("amqp:not-implemented"), ErrNotImplemented, false},
		{"rejected outcome", amqpErr("send", &goamqp.Error{Condition: "amqp:not-found"}), ErrDeviceNotFound, false},
		{"closed link", amqpErr("send", &goamqp.LinkError{}), ErrConnectionLost, true},
		{"closed connection", amqpErr("send", &goamqp.ConnError{}), ErrConnectionLost, true},
		{"EOF", amqpErr("dial", io.EOF), ErrConnectionLost, true},
		{"refused", amqpErr("dial", &net.OpError{Op: "dial", Err: errors.New("connection refused")}), nil, true},
		{"bad certificate", amqpErr("dial", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), nil, false},
		{"cbs 401", &CBSError{Status: 401}, ErrUnauthorized, false},
		{"cbs 404", &CBSError{Status: 404}, ErrDeviceNotFound, false},
		{"cbs 503", &CBSError{Status: 503}, nil, true},
		{"rest 404", &Error{StatusCode: 404, Code: "DeviceNotFound"}, ErrDeviceNotFound, false},
		{"rest not online", &Error{StatusCode: 404, Code: "DeviceNotOnline"}, ErrDeviceNotOnline, false},
		{"rest 504", &Error{StatusCode: 504, Code: "GatewayTimeout"}, ErrTimeout, false},
		{"rest 429", &Error{StatusCode: 429}, ErrThrottled, false},
		{"closed", fmt.Errorf("x: %w", ErrClosed), ErrClosed, false},
		{"canceled", context.Canceled, nil, false},
	}
	all := []error{ErrUnauthorized, ErrDeviceNotFound, ErrQueueDepthExceeded, ErrThrottled, ErrQuotaExceeded,
		ErrMessageTooLarge, ErrLockLost, ErrTimeout, ErrConnectionLost, ErrPreconditionFailed, ErrNotImplemented, ErrDeviceNotOnline}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, s := range all {
				if got := errors.Is(tc.err, s); got != (s == tc.is) {
					t.Errorf("errors.Is(%v, %v) = %v", tc.err, s, got)
				}
			}
			if tc.is != nil && !errors.Is(tc.err, tc.is) {
				t.Errorf("%v is not %v", tc.err, tc.is)
			}
			if got := retryable(tc.err); got != tc.retryable {
				t.Errorf("retryable(%v) = %v, want %v", tc.err, got, tc.retryable)
			}
		})
	}
	// The go-amqp error stays reachable.
	var le *goamqp.LinkError
	if !errors.As(remote("amqp:not-found"), &le) {
		t.Error("the go-amqp *LinkError is not in the chain")
	}
}

func TestRetryDelay(t *testing.T) {
	r := RetryOptions{MinDelay: 100 * time.Millisecond, MaxDelay: time.Second}.withDefaults()
	for n, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		for range 20 {
			if d := r.delay(n); d < want/2 || d > want {
				t.Fatalf("delay(%d) = %v, want within [%v, %v]", n, d, want/2, want)
			}
		}
	}
	tests := []struct {
		max     int
		attempt int
		allows  bool
	}{{0, 1000, true}, {-1, 0, false}, {3, 2, true}, {3, 3, false}}
	for _, tc := range tests {
		if got := (RetryOptions{MaxRetries: tc.max}).allows(tc.attempt); got != tc.allows {
			t.Errorf("MaxRetries %d: allows(%d) = %v", tc.max, tc.attempt, got)
		}
	}
}

func TestStartPositions(t *testing.T) {
	at := time.UnixMilli(1700000000123)
	tests := []struct {
		in       string
		selector string
		bad      bool
	}{
		{"earliest", "amqp.annotation.x-opt-offset > '-1'", false},
		{"", "amqp.annotation.x-opt-offset > '-1'", false},
		{"latest", "amqp.annotation.x-opt-offset > '@latest'", false},
		{"42", "amqp.annotation.x-opt-sequence-number >= '42'", false},
		{at.UTC().Format(time.RFC3339Nano), "amqp.annotation.x-opt-enqueued-time >= '1700000000123'", false},
		{"-5", "", true},
		{"yesterday", "", true},
		{"2024-13-01T00:00:00Z", "", true},
	}
	for _, tc := range tests {
		p, err := ParseStartPosition(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("ParseStartPosition(%q): %v", tc.in, err)
			continue
		}
		if !tc.bad && p.selector() != tc.selector {
			t.Errorf("ParseStartPosition(%q).selector() = %q, want %q", tc.in, p.selector(), tc.selector)
		}
	}
}

func TestParseAckMode(t *testing.T) {
	for in, want := range map[string]AckMode{"": AckNone, "none": AckNone, "Full": AckFull, "positive": AckPositive, "NEGATIVE": AckNegative} {
		if got, err := ParseAckMode(in); err != nil || got != want {
			t.Errorf("ParseAckMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseAckMode("always"); err == nil {
		t.Error("ParseAckMode accepted always")
	}
}

func TestFeedbackRecordJSON(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{`{"originalMessageId":"m1","deviceId":"d1","deviceGenerationId":"g","enqueuedTimeUtc":"2024-05-06T07:08:09.1234567Z","statusCode":"Success","description":"Success"}`,
			time.Date(2024, 5, 6, 7, 8, 9, 123456700, time.UTC), false},
		{`{"originalMessageId":"m1","enqueuedTimeUtc":"2024-05-06T07:08:09.5","statusCode":"Expired"}`,
			time.Date(2024, 5, 6, 7, 8, 9, 500000000, time.UTC), false},
		{`{"enqueuedTimeUtc":"last tuesday"}`, time.Time{}, true},
		{`[1]`, time.Time{}, true},
	}
	for _, tc := range tests {
		var r FeedbackRecord
		err := json.Unmarshal([]byte(tc.in), &r)
		if (err != nil) != tc.bad {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !tc.bad && (!r.EnqueuedTime.Equal(tc.want) || r.OriginalMessageID != "m1") {
			t.Errorf("%s: %+v", tc.in, r)
		}
	}
}

func TestTwinPatchJSON(t *testing.T) {
	tests := []struct {
		p    TwinPatch
		want string
	}{
		{TwinPatch{Desired: map[string]any{"a": 1}}, `{"properties":{"desired":{"a":1}}}`},
		{TwinPatch{Tags: map[string]any{"site": "x"}}, `{"tags":{"site":"x"}}`},
		{TwinPatch{Tags: map[string]any{"t": nil}, Desired: map[string]any{"d": nil}}, `{"tags":{"t":null},"properties":{"desired":{"d":null}}}`},
	}
	for _, tc := range tests {
		b, err := json.Marshal(tc.p)
		if err != nil || string(b) != tc.want {
			t.Errorf("%+v: %s %v, want %s", tc.p, b, err, tc.want)
		}
	}
}

func TestGUIDString(t *testing.T) {
	b := []byte{0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	if got, want := guidString(b), "00112233-4455-6677-8899-aabbccddeeff"; got != want {
		t.Errorf("guidString = %s, want %s", got, want)
	}
}

func TestMessageConversion(t *testing.T) {
	exp := time.Now().Add(time.Hour).Truncate(time.Millisecond).UTC()
	m := &Message{Body: []byte("b"), MessageID: "id", CorrelationID: "c", UserID: "u", ContentType: "ct", ContentEncoding: "ce", ExpiryTime: exp, Properties: map[string]string{"k": "v"}}
	am, err := m.amqpMessage("/to")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := am.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back goamqp.Message
	if err := back.UnmarshalBinary(raw); err != nil {
		t.Fatal(err)
	}
	var got Message
	got.fromAMQP(&back)
	if string(got.Body) != "b" || got.MessageID != "id" || got.CorrelationID != "c" || got.UserID != "u" || got.ContentType != "ct" ||
		got.ContentEncoding != "ce" || !got.ExpiryTime.Equal(exp) || got.Properties["k"] != "v" || *back.Properties.To != "/to" {
		t.Errorf("round trip: %+v", got)
	}
	if _, err := (&Message{Properties: map[string]string{"": "x"}}).amqpMessage(""); err == nil {
		t.Error("an empty property name was accepted")
	}
	// Ids and property values of other AMQP types are formatted.
	back.Properties.MessageID = uint64(7)
	back.Properties.CorrelationID = goamqp.UUID{1: 1}
	back.ApplicationProperties = map[string]any{"n": int32(5), "b": true}
	got = Message{}
	got.fromAMQP(&back)
	if got.MessageID != "7" || !strings.HasPrefix(got.CorrelationID, "00010000-") || got.Properties["n"] != "5" || got.Properties["b"] != "true" {
		t.Errorf("typed values: %+v", got)
	}
}
