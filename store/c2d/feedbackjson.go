package c2d

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// FeedbackContentType is the content-type of a feedback message; the C#
// service SDK refuses feedback messages with any other.
const FeedbackContentType = "application/vnd.microsoft.iothub.feedback.json"

// feedbackTimeLayout is .NET's round-trip ("o") format for a UTC DateTime,
// which is what IoT Hub emits: always seven fractional digits and a Z. The
// Java service SDK's parser insists on the trailing Z; Newtonsoft (C#) and
// JavaScript's Date accept it.
const feedbackTimeLayout = "2006-01-02T15:04:05.0000000Z"

// feedbackJSON fixes the field order and names of IoT Hub's records. Every
// field is always present: the C service SDK reads each as a string.
type feedbackJSON struct {
	OriginalMessageID  string `json:"originalMessageId"`
	EnqueuedTimeUTC    string `json:"enqueuedTimeUtc"`
	StatusCode         string `json:"statusCode"`
	Description        string `json:"description"`
	DeviceID           string `json:"deviceId"`
	DeviceGenerationID string `json:"deviceGenerationId"`
}

// FormatFeedbackTime formats t as IoT Hub formats enqueuedTimeUtc.
func FormatFeedbackTime(t time.Time) string {
	return t.UTC().Format(feedbackTimeLayout)
}

// MarshalFeedback encodes records as the body of one feedback message: a
// JSON array of objects with originalMessageId, enqueuedTimeUtc, statusCode,
// description (the same word as statusCode, which the C service SDK parses),
// deviceId and deviceGenerationId.
func MarshalFeedback(records []FeedbackRecord) ([]byte, error) {
	out := make([]feedbackJSON, len(records))
	for i, r := range records {
		if !r.Status.valid() {
			return nil, fmt.Errorf("c2d: marshal feedback record %d: status %d: %w", i, r.Status, ErrInvalid)
		}
		out[i] = feedbackJSON{
			OriginalMessageID:  r.OriginalMessageID,
			EnqueuedTimeUTC:    FormatFeedbackTime(r.EnqueuedTime),
			StatusCode:         r.Status.String(),
			Description:        r.Status.String(),
			DeviceID:           r.DeviceID,
			DeviceGenerationID: r.DeviceGenerationID,
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Message ids are opaque; escaping <, > and & as \u003c would be valid
	// JSON but needlessly differ from what IoT Hub sends.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return nil, fmt.Errorf("c2d: marshal feedback: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ParseFeedback decodes a feedback message body. It accepts any RFC 3339
// enqueuedTimeUtc and takes the status from statusCode, falling back to
// description when statusCode is missing.
func ParseFeedback(body []byte) ([]FeedbackRecord, error) {
	var in []feedbackJSON
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, fmt.Errorf("c2d: parse feedback: %w", err)
	}
	out := make([]FeedbackRecord, len(in))
	for i, r := range in {
		word := r.StatusCode
		if word == "" {
			word = r.Description
		}
		st, err := ParseFeedbackStatus(word)
		if err != nil {
			return nil, fmt.Errorf("c2d: parse feedback record %d: %w", i, err)
		}
		t, err := time.Parse(time.RFC3339Nano, r.EnqueuedTimeUTC)
		if err != nil {
			return nil, fmt.Errorf("c2d: parse feedback record %d: enqueuedTimeUtc: %w", i, err)
		}
		out[i] = FeedbackRecord{
			OriginalMessageID:  r.OriginalMessageID,
			DeviceID:           r.DeviceID,
			DeviceGenerationID: r.DeviceGenerationID,
			Status:             st,
			EnqueuedTime:       t.UTC(),
		}
	}
	return out, nil
}
