package c2d_test

import (
	"errors"
	"testing"
	"time"

	"amqphub/store/c2d"
)

func TestParseAckMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want c2d.AckMode
		err  bool
	}{
		{"", c2d.AckNone, false},
		{"none", c2d.AckNone, false},
		{"positive", c2d.AckPositive, false},
		{"NEGATIVE", c2d.AckNegative, false},
		{"Full", c2d.AckFull, false},
		{"fully", 0, true},
		{" full", 0, true},
	} {
		got, err := c2d.ParseAckMode(tc.in)
		if tc.err != (err != nil) || got != tc.want {
			t.Errorf("ParseAckMode(%q) = %v, %v", tc.in, got, err)
		}
		if tc.err && !errors.Is(err, c2d.ErrInvalid) {
			t.Errorf("ParseAckMode(%q) error %v is not ErrInvalid", tc.in, err)
		}
		if !tc.err && tc.in != "" {
			if back, _ := c2d.ParseAckMode(got.String()); back != got {
				t.Errorf("%v does not round-trip through String", got)
			}
		}
	}
}

func TestLockTokenGUID(t *testing.T) {
	var tok c2d.LockToken
	for i := range tok {
		tok[i] = byte(i)
	}
	// .NET: new Guid(new byte[]{0,1,...,15}).ToString()
	const want = "03020100-0504-0706-0809-0a0b0c0d0e0f"
	if got := tok.String(); got != want {
		t.Fatalf("String() = %s; want %s", got, want)
	}
	for _, s := range []string{want, "{03020100-0504-0706-0809-0A0B0C0D0E0F}"} {
		back, err := c2d.ParseLockToken(s)
		if err != nil || back != tok {
			t.Fatalf("ParseLockToken(%q) = %v, %v", s, back, err)
		}
	}
	for _, bad := range []string{"", "03020100-0504-0706-0809-0a0b0c0d0e0", "03020100x0504-0706-0809-0a0b0c0d0e0f", "0302010g-0504-0706-0809-0a0b0c0d0e0f"} {
		if _, err := c2d.ParseLockToken(bad); !errors.Is(err, c2d.ErrInvalid) {
			t.Errorf("ParseLockToken(%q) = %v; want ErrInvalid", bad, err)
		}
	}
}

func TestMarshalFeedback(t *testing.T) {
	recs := []c2d.FeedbackRecord{
		{OriginalMessageID: "a<b>&c", DeviceID: "dev1", DeviceGenerationID: "636", Status: c2d.StatusSuccess,
			EnqueuedTime: time.Date(2016, 6, 1, 21, 22, 43, 799688300, time.UTC)},
		{DeviceID: "dev\"2", Status: c2d.StatusDeliveryCountExceeded,
			EnqueuedTime: time.Date(2016, 6, 1, 23, 22, 43, 0, time.FixedZone("x", 2*3600))},
	}
	got, err := c2d.MarshalFeedback(recs)
	if err != nil {
		t.Fatal(err)
	}
	// The layout IoT Hub sends: all six fields, .NET round-trip UTC time
	// with seven fractional digits, description equal to statusCode.
	want := `[{"originalMessageId":"a<b>&c","enqueuedTimeUtc":"2016-06-01T21:22:43.7996883Z","statusCode":"Success","description":"Success","deviceId":"dev1","deviceGenerationId":"636"},` +
		`{"originalMessageId":"","enqueuedTimeUtc":"2016-06-01T21:22:43.0000000Z","statusCode":"DeliveryCountExceeded","description":"DeliveryCountExceeded","deviceId":"dev\"2","deviceGenerationId":""}]`
	if string(got) != want {
		t.Fatalf("MarshalFeedback =\n%s\nwant\n%s", got, want)
	}
	back, err := c2d.ParseFeedback(got)
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		r := recs[i]
		r.EnqueuedTime = r.EnqueuedTime.UTC().Truncate(100 * time.Nanosecond)
		if back[i] != r {
			t.Fatalf("record %d round trip: %+v; want %+v", i, back[i], r)
		}
	}
	if empty, err := c2d.MarshalFeedback(nil); err != nil || string(empty) != "[]" {
		t.Fatalf("MarshalFeedback(nil) = %s, %v", empty, err)
	}
	if _, err := c2d.MarshalFeedback([]c2d.FeedbackRecord{{Status: 42}}); !errors.Is(err, c2d.ErrInvalid) {
		t.Fatalf("bad status: %v", err)
	}
}

func TestParseFeedback(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		status   c2d.FeedbackStatus
	}{
		{"status from description, lowercase", `[{"description":"expired","enqueuedTimeUtc":"2020-01-01T00:00:00Z"}]`, true, c2d.StatusExpired},
		{"offset time", `[{"statusCode":"Purged","enqueuedTimeUtc":"2020-01-01T02:00:00+02:00"}]`, true, c2d.StatusPurged},
		{"not json", `[{`, false, 0},
		{"object not array", `{"statusCode":"Success"}`, false, 0},
		{"unknown status", `[{"statusCode":"Meh","enqueuedTimeUtc":"2020-01-01T00:00:00Z"}]`, false, 0},
		{"bad time", `[{"statusCode":"Success","enqueuedTimeUtc":"yesterday"}]`, false, 0},
	} {
		recs, err := c2d.ParseFeedback([]byte(tc.in))
		if tc.ok != (err == nil) {
			t.Fatalf("%s: err = %v", tc.name, err)
		}
		if tc.ok && (len(recs) != 1 || recs[0].Status != tc.status || !recs[0].EnqueuedTime.Equal(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))) {
			t.Fatalf("%s: %+v", tc.name, recs)
		}
	}
}
