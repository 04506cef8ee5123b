package client

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// UserAgent is sent in the connection properties and REST requests.
const UserAgent = "amqphub-go-client/1"

// Message is a message a device sends to the cloud (telemetry) or the
// service sends to a device (cloud-to-device). Fields map to the AMQP
// properties IoT Hub uses; Properties are the application properties that
// routing queries and consumers see.
type Message struct {
	Body []byte
	// MessageID identifies the message; IoT Hub feedback refers to it.
	MessageID     string
	CorrelationID string
	// UserID, if set, must match the sender's identity on IoT Hub.
	UserID          string
	ContentType     string
	ContentEncoding string
	// ExpiryTime is when the hub may drop the message (absolute-expiry-time);
	// zero uses the hub's default time to live.
	ExpiryTime time.Time
	// Properties are application properties.
	Properties map[string]string
}

// batchFormat is the message format of a batch: each Data section of the
// body is a whole encoded message (Microsoft's 0x80013700).
const batchFormat = 0x80013700

// amqpMessage converts m for sending; to, if set, is the AMQP "to".
func (m *Message) amqpMessage(to string) (*goamqp.Message, error) {
	if m == nil {
		return nil, errors.New("nil message")
	}
	out := &goamqp.Message{Data: [][]byte{m.Body}}
	if m.Body == nil {
		out.Data = [][]byte{{}}
	}
	p := &goamqp.MessageProperties{}
	set := false
	if m.MessageID != "" {
		p.MessageID, set = m.MessageID, true
	}
	if m.CorrelationID != "" {
		p.CorrelationID, set = m.CorrelationID, true
	}
	if m.UserID != "" {
		p.UserID, set = []byte(m.UserID), true
	}
	if m.ContentType != "" {
		p.ContentType, set = &m.ContentType, true
	}
	if m.ContentEncoding != "" {
		p.ContentEncoding, set = &m.ContentEncoding, true
	}
	if !m.ExpiryTime.IsZero() {
		t := m.ExpiryTime
		p.AbsoluteExpiryTime, set = &t, true
	}
	if to != "" {
		p.To, set = &to, true
	}
	if set {
		out.Properties = p
	}
	if len(m.Properties) > 0 {
		out.ApplicationProperties = make(map[string]any, len(m.Properties))
		for k, v := range m.Properties {
			if k == "" {
				return nil, errors.New("an application property has an empty name")
			}
			out.ApplicationProperties[k] = v
		}
	}
	return out, nil
}

// fromAMQP fills m from a received message; application properties that
// are not strings are formatted.
func (m *Message) fromAMQP(a *goamqp.Message) {
	m.Body = messageBody(a)
	if p := a.Properties; p != nil {
		m.MessageID = idString(p.MessageID)
		m.CorrelationID = idString(p.CorrelationID)
		m.UserID = string(p.UserID)
		if p.ContentType != nil {
			m.ContentType = *p.ContentType
		}
		if p.ContentEncoding != nil {
			m.ContentEncoding = *p.ContentEncoding
		}
		if p.AbsoluteExpiryTime != nil {
			m.ExpiryTime = *p.AbsoluteExpiryTime
		}
	}
	if len(a.ApplicationProperties) > 0 {
		m.Properties = make(map[string]string, len(a.ApplicationProperties))
		for k, v := range a.ApplicationProperties {
			m.Properties[k] = valueString(v)
		}
	}
}

// messageBody returns the body: the Data sections joined, or an
// amqp-value string or binary.
func messageBody(a *goamqp.Message) []byte {
	switch len(a.Data) {
	case 0:
	case 1:
		return a.Data[0]
	default:
		return bytes.Join(a.Data, nil)
	}
	switch v := a.Value.(type) {
	case string:
		return []byte(v)
	case []byte:
		return v
	}
	return nil
}

// idString formats a message-id or correlation-id of any AMQP type.
func idString(v any) string {
	switch id := v.(type) {
	case nil:
		return ""
	case string:
		return id
	case goamqp.UUID:
		return id.String()
	case []byte:
		return string(id)
	case uint64:
		return strconv.FormatUint(id, 10)
	}
	return fmt.Sprint(v)
}

// valueString formats an application property value.
func valueString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// annotation returns a message annotation by name (keys arrive as
// strings, decoded from symbols).
func annotation(a *goamqp.Message, key string) (any, bool) {
	if a.Annotations == nil {
		return nil, false
	}
	if v, ok := a.Annotations[key]; ok {
		return v, true
	}
	if v, ok := a.Annotations[goamqp.Symbol(key)]; ok {
		return v, true
	}
	return nil, false
}

func annotationString(a *goamqp.Message, key string) string {
	v, _ := annotation(a, key)
	s, _ := v.(string)
	return s
}

func annotationTime(a *goamqp.Message, key string) time.Time {
	v, _ := annotation(a, key)
	t, _ := v.(time.Time)
	return t
}

func annotationInt(a *goamqp.Message, key string) (int64, bool) {
	v, ok := annotation(a, key)
	if !ok {
		return 0, false
	}
	return toInt64(v)
}
