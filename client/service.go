package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// ServiceOptions adjust how a ServiceClient reaches the hub.
type ServiceOptions struct {
	// TLSConfig trusts the hub's certificate (AMQPS and HTTPS).
	TLSConfig *tls.Config
	// Address overrides where AMQP connects: host:port (TLS) or
	// amqps://host:port / amqp://host:port. Default {HostName}:5671.
	Address string
	// RESTURL overrides the REST base URL (default https://{HostName}).
	RESTURL string
	// HTTPClient replaces the REST client (TLSConfig is then ignored for
	// REST).
	HTTPClient *http.Client
	// EventHubAddress overrides where telemetry reads connect after the
	// redirect (host:port, or a URL with scheme amqp or amqps); default:
	// the host and port the redirect names.
	EventHubAddress string
	// TokenLifetime is the lifetime of the tokens the client signs
	// (default 1 h); they are renewed after three quarters of it.
	TokenLifetime time.Duration
	// Retry says how calls retry after a lost connection or throttling.
	Retry RetryOptions
	// Logger receives connection events; default: none.
	Logger *slog.Logger
}

// ServiceClient is a back-end application's view of the hub: it sends
// cloud-to-device messages and receives their feedback over AMQP, reads
// telemetry from the Event-Hub-compatible endpoint, invokes direct methods
// and manages devices and twins over REST (the embedded Registry).
//
// It is safe for concurrent use; Close it to release its connections.
type ServiceClient struct {
	*Registry
	conn   *connector
	opts   ServiceOptions
	policy string
	key    string // base64, as in the connection string
	keyRaw []byte
	retry  RetryOptions
	log    *slog.Logger

	mu      sync.Mutex
	closed  bool
	readers map[*EventReader]struct{}
}

// NewServiceClient returns a client for a service connection string
// (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...); the policy
// needs ServiceConnect for AMQP and the registry rights for REST. It does
// not connect yet.
func NewServiceClient(connectionString string, opts *ServiceOptions) (*ServiceClient, error) {
	cs, err := ParseServiceConnectionString(connectionString)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &ServiceOptions{}
	}
	key, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey)
	if err != nil {
		return nil, fmt.Errorf("client: SharedAccessKey is not base64: %w", err)
	}
	reg, err := NewRegistry(connectionString, &RegistryOptions{TLSConfig: opts.TLSConfig, BaseURL: opts.RESTURL, HTTPClient: opts.HTTPClient})
	if err != nil {
		return nil, err
	}
	u, err := amqpURL(cs.HostName, opts.Address)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life := opts.TokenLifetime
	if life <= 0 {
		life = DefaultTokenLifetime
	}
	host := cs.HostName
	sign := func(context.Context) (string, time.Time, error) {
		exp := tokenExpiry(life)
		return SignToken(host, key, cs.SharedAccessKeyName, exp), exp, nil
	}
	s := &ServiceClient{
		Registry: reg,
		conn: newConnector(dialConfig{
			hostName: stripPort(host), url: u, tlsConfig: opts.TLSConfig, anonymous: true,
			claims: []claim{{audience: host, token: sign}}, log: log,
		}),
		opts: *opts, policy: cs.SharedAccessKeyName, key: cs.SharedAccessKey, keyRaw: key,
		retry: opts.Retry.withDefaults(), log: log,
		readers: map[*EventReader]struct{}{},
	}
	s.opts.TokenLifetime = life
	return s, nil
}

// Connect connects and authenticates now rather than on first use.
func (s *ServiceClient) Connect(ctx context.Context) error {
	_, err := s.conn.get(ctx)
	return err
}

// Close closes the AMQP connections, including those of open event
// readers.
func (s *ServiceClient) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	readers := make([]*EventReader, 0, len(s.readers))
	for r := range s.readers {
		readers = append(readers, r)
	}
	s.mu.Unlock()
	for _, r := range readers {
		r.Close()
	}
	s.conn.close()
	// Pooled REST connections would otherwise linger until the server
	// times them out.
	s.Registry.Close()
	return nil
}

func (s *ServiceClient) do(ctx context.Context, op string, f func(context.Context, *liveConn) error) error {
	return doRetry(ctx, s.conn, s.retry, s.log, op, f)
}

// C2DOptions are the options of SendC2D.
type C2DOptions struct {
	// ModuleID sends to a module of the device.
	ModuleID string
	// Ack asks for feedback (default none).
	Ack AckMode
}

// SendC2D queues a cloud-to-device message for a device and returns once
// the hub has accepted it. A missing MessageID is set to a new UUID
// (feedback refers to messages by id). The hub refuses messages for
// unknown devices (ErrDeviceNotFound) and beyond the queue's depth
// (ErrQueueDepthExceeded). Set msg.ExpiryTime for a time to live other
// than the hub's default.
func (s *ServiceClient) SendC2D(ctx context.Context, deviceID string, msg *Message, opts *C2DOptions) error {
	if deviceID == "" {
		return errors.New("send C2D: empty device id")
	}
	if msg == nil {
		return errors.New("send C2D: nil message")
	}
	if opts == nil {
		opts = &C2DOptions{}
	}
	ack, err := ParseAckMode(string(opts.Ack))
	if err != nil {
		return fmt.Errorf("send C2D: %w", err)
	}
	if msg.MessageID == "" {
		msg.MessageID = newUUID()
	}
	to := "/devices/" + url.PathEscape(deviceID)
	if opts.ModuleID != "" {
		to += "/modules/" + url.PathEscape(opts.ModuleID)
	}
	to += "/messages/devicebound"
	am, err := msg.amqpMessage(to)
	if err != nil {
		return fmt.Errorf("send C2D: %w", err)
	}
	if am.ApplicationProperties == nil {
		am.ApplicationProperties = map[string]any{}
	}
	am.ApplicationProperties["iothub-ack"] = string(ack)
	return s.do(ctx, "send C2D to "+deviceID, func(ctx context.Context, lc *liveConn) error {
		snd, err := cachedLink(ctx, lc, "c2d", func(ctx context.Context, ss *goamqp.Session) (*goamqp.Sender, error) {
			return ss.NewSender(ctx, "/messages/devicebound", &goamqp.SenderOptions{Properties: map[string]any{"com.microsoft:client-version": UserAgent}})
		})
		if err != nil {
			return amqpErr("send C2D: attach /messages/devicebound", err)
		}
		err = snd.Send(ctx, am, nil)
		lc.note("c2d", err)
		return amqpErr("send C2D to "+deviceID, err)
	})
}

// FeedbackStatus is the outcome a feedback record reports.
type FeedbackStatus string

// Feedback outcomes.
const (
	FeedbackSuccess               FeedbackStatus = "Success"
	FeedbackExpired               FeedbackStatus = "Expired"
	FeedbackDeliveryCountExceeded FeedbackStatus = "DeliveryCountExceeded"
	FeedbackRejected              FeedbackStatus = "Rejected"
	FeedbackPurged                FeedbackStatus = "Purged"
)

// FeedbackRecord is the fate of one cloud-to-device message.
type FeedbackRecord struct {
	OriginalMessageID  string         `json:"originalMessageId"`
	DeviceID           string         `json:"deviceId"`
	DeviceGenerationID string         `json:"deviceGenerationId"`
	EnqueuedTime       time.Time      `json:"enqueuedTimeUtc"`
	StatusCode         FeedbackStatus `json:"statusCode"`
	Description        string         `json:"description"`
}

// UnmarshalJSON accepts enqueuedTimeUtc with or without a time zone (the
// .NET format omits it for UTC).
func (r *FeedbackRecord) UnmarshalJSON(b []byte) error {
	var raw struct {
		OriginalMessageID  string `json:"originalMessageId"`
		DeviceID           string `json:"deviceId"`
		DeviceGenerationID string `json:"deviceGenerationId"`
		EnqueuedTime       string `json:"enqueuedTimeUtc"`
		StatusCode         string `json:"statusCode"`
		Description        string `json:"description"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*r = FeedbackRecord{
		OriginalMessageID: raw.OriginalMessageID, DeviceID: raw.DeviceID, DeviceGenerationID: raw.DeviceGenerationID,
		StatusCode: FeedbackStatus(raw.StatusCode), Description: raw.Description,
	}
	if raw.EnqueuedTime != "" {
		t, err := parseHubTime(raw.EnqueuedTime)
		if err != nil {
			return fmt.Errorf("enqueuedTimeUtc: %w", err)
		}
		r.EnqueuedTime = t
	}
	return nil
}

// parseHubTime parses ISO-8601 times as the hub writes them: RFC 3339, or
// without a zone meaning UTC.
func parseHubTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.ParseInLocation("2006-01-02T15:04:05.999999999", s, time.UTC)
}

// FeedbackBatch is one feedback message: records of several C2D
// messages. Complete it once handled; otherwise the hub delivers it again.
type FeedbackBatch struct {
	Records []FeedbackRecord
	// EnqueuedTime is when the hub made the batch.
	EnqueuedTime time.Time
	// UserID is the hub's name.
	UserID string

	lc  *liveConn
	rcv *goamqp.Receiver
	raw *goamqp.Message
}

// feedbackContentType is what the hub sets on feedback messages.
const feedbackContentType = "application/vnd.microsoft.iothub.feedback.json"

// ReceiveFeedback waits for the next batch of feedback records.
func (s *ServiceClient) ReceiveFeedback(ctx context.Context) (*FeedbackBatch, error) {
	var out *FeedbackBatch
	err := s.do(ctx, "receive feedback", func(ctx context.Context, lc *liveConn) error {
		rcv, err := cachedLink(ctx, lc, "feedback", func(ctx context.Context, ss *goamqp.Session) (*goamqp.Receiver, error) {
			return ss.NewReceiver(ctx, "/messages/serviceBound/feedback", &goamqp.ReceiverOptions{Credit: 1})
		})
		if err != nil {
			return amqpErr("receive feedback: attach /messages/serviceBound/feedback", err)
		}
		m, err := rcv.Receive(ctx, nil)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lc.note("feedback", err)
			return amqpErr("receive feedback", err)
		}
		b := &FeedbackBatch{lc: lc, rcv: rcv, raw: m, EnqueuedTime: annotationTime(m, "iothub-enqueuedtime")}
		if m.Properties != nil {
			b.UserID = string(m.Properties.UserID)
			if ct := m.Properties.ContentType; ct != nil && !strings.EqualFold(*ct, feedbackContentType) {
				_ = rcv.RejectMessage(ctx, m, &goamqp.Error{Condition: goamqp.ErrCondDecodeError, Description: "not a feedback message: content type " + *ct})
				return fmt.Errorf("receive feedback: unexpected content type %q", *ct)
			}
		}
		dec := json.NewDecoder(bytes.NewReader(messageBody(m)))
		if err := dec.Decode(&b.Records); err != nil {
			_ = rcv.RejectMessage(ctx, m, &goamqp.Error{Condition: goamqp.ErrCondDecodeError, Description: "feedback body is not a JSON array of records"})
			return fmt.Errorf("receive feedback: the body is not a JSON array of records: %w", err)
		}
		out = b
		return nil
	})
	return out, err
}

// Complete removes the batch from the hub's feedback queue.
func (b *FeedbackBatch) Complete(ctx context.Context) error {
	return b.settle(ctx, "complete", b.rcv.AcceptMessage)
}

// Abandon returns the batch to the feedback queue for another delivery.
func (b *FeedbackBatch) Abandon(ctx context.Context) error {
	return b.settle(ctx, "abandon", b.rcv.ReleaseMessage)
}

func (b *FeedbackBatch) settle(ctx context.Context, op string, f func(context.Context, *goamqp.Message) error) error {
	if !b.lc.alive() {
		return fmt.Errorf("%s feedback: %w: the connection that delivered it is gone", op, ErrLockLost)
	}
	if err := f(ctx, b.raw); err != nil {
		return fmt.Errorf("%s feedback: %w: %w", op, ErrLockLost, amqpErr("disposition", err))
	}
	return nil
}
