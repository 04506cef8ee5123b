package interop

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"
	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/store/partlog"
)

// ehRecord is a telemetry record as ingest stores it: an encoded AMQP
// message carrying the iothub-* annotations.
func ehRecord(t testing.TB, i int) []byte {
	t.Helper()
	m := &frames.Message{
		Annotations: map[any]any{
			encoding.Symbol("iothub-connection-device-id"): "sensor-1",
			encoding.Symbol("iothub-enqueuedtime"):         time.Now().UTC(),
			encoding.Symbol("iothub-message-source"):       "Telemetry",
		},
		Properties:            &frames.Properties{MessageID: fmt.Sprintf("m%d", i), ContentType: "application/json"},
		ApplicationProperties: map[string]any{"index": int64(i)},
		Data:                  [][]byte{fmt.Appendf(nil, `{"n":%d}`, i)},
	}
	b, err := m.AppendAMQP(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ehSeed(t testing.TB, lg partlog.Log, part, from, n int) []partlog.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []partlog.Entry
	for i := from; i < from+n; i++ {
		e, err := lg.Append(ctx, part, ehRecord(t, i))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// waitClockPast spins until the wall clock is past ms, so that the next
// append gets a later enqueued time.
func waitClockPast(ms int64) {
	for time.Now().UnixMilli() <= ms {
		time.Sleep(time.Millisecond)
	}
}

func checkSDKEvent(t *testing.T, ev *azeventhubs.ReceivedEventData, want partlog.Entry, index int) {
	t.Helper()
	if ev.SequenceNumber != want.Seq || ev.Offset != fmt.Sprint(want.Offset) || ev.EnqueuedTime == nil || ev.EnqueuedTime.UnixMilli() != want.EnqueuedTime {
		t.Errorf("event %d: seq %d offset %q time %v, want %d %d %d", index, ev.SequenceNumber, ev.Offset, ev.EnqueuedTime, want.Seq, want.Offset, want.EnqueuedTime)
	}
	if string(ev.Body) != fmt.Sprintf(`{"n":%d}`, index) || ev.Properties["index"] != int64(index) {
		t.Errorf("event %d: body %q properties %v", index, ev.Body, ev.Properties)
	}
	if ev.SystemProperties["iothub-connection-device-id"] != "sensor-1" {
		t.Errorf("event %d: system properties %v", index, ev.SystemProperties)
	}
	if ev.MessageID == nil || *ev.MessageID != fmt.Sprintf("m%d", index) || ev.ContentType == nil || *ev.ContentType != "application/json" {
		t.Errorf("event %d: message-id %v content-type %v", index, ev.MessageID, ev.ContentType)
	}
}

// TestAzEventHubsConsumer drives the Go azeventhubs v2 ConsumerClient
// against the built-in endpoint over TLS (CustomEndpoint + TLSConfig) and
// over plain AMQP with the emulator connection string.
func TestAzEventHubsConsumer(t *testing.T) {
	s := server.StartTest(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	strs, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := ehSeed(t, s.Log, 0, 0, 10)
	waitClockPast(first[9].EnqueuedTime)
	entries := append(first, ehSeed(t, s.Log, 0, 10, 10)...)

	clients := map[string]func() (*azeventhubs.ConsumerClient, error){
		"tls": func() (*azeventhubs.ConsumerClient, error) {
			return azeventhubs.NewConsumerClientFromConnectionString(strs.EventHub, "", azeventhubs.DefaultConsumerGroup,
				&azeventhubs.ConsumerClientOptions{TLSConfig: s.ClientTLS, CustomEndpoint: s.AMQPSAddr})
		},
		"emulator": func() (*azeventhubs.ConsumerClient, error) {
			return azeventhubs.NewConsumerClientFromConnectionString(strs.EmulatorE, "", azeventhubs.DefaultConsumerGroup, nil)
		},
	}
	for _, name := range []string{"tls", "emulator"} {
		t.Run(name, func(t *testing.T) {
			cc, err := clients[name]()
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close(ctx)

			hp, err := cc.GetEventHubProperties(ctx, nil)
			if err != nil {
				t.Fatalf("GetEventHubProperties: %v", err)
			}
			if hp.Name != s.Options.EventHubName || strings.Join(hp.PartitionIDs, ",") != "0,1,2,3" || hp.CreatedOn.IsZero() || hp.GeoReplicationEnabled {
				t.Fatalf("event hub properties %+v", hp)
			}
			pp, err := cc.GetPartitionProperties(ctx, "0", nil)
			if err != nil {
				t.Fatalf("GetPartitionProperties: %v", err)
			}
			last := entries[len(entries)-1]
			if pp.PartitionID != "0" || pp.BeginningSequenceNumber != 0 || pp.LastEnqueuedSequenceNumber != last.Seq ||
				pp.LastEnqueuedOffset != fmt.Sprint(last.Offset) || pp.LastEnqueuedOn.UnixMilli() != last.EnqueuedTime || pp.IsEmpty {
				t.Fatalf("partition properties %+v, last entry %+v", pp, last)
			}
			if pp, err := cc.GetPartitionProperties(ctx, "3", nil); err != nil || !pp.IsEmpty || pp.LastEnqueuedSequenceNumber != -1 {
				t.Fatalf("empty partition: %+v, %v", pp, err)
			}
			if _, err := cc.GetPartitionProperties(ctx, "9", nil); err == nil {
				t.Fatal("properties of partition 9: no error")
			}

			starts := []struct {
				name  string
				pos   azeventhubs.StartPosition
				first int
			}{
				{"earliest", azeventhubs.StartPosition{Earliest: to.Ptr(true)}, 0},
				{"sequence number", azeventhubs.StartPosition{SequenceNumber: to.Ptr(entries[4].Seq)}, 5},
				{"sequence number inclusive", azeventhubs.StartPosition{SequenceNumber: to.Ptr(entries[4].Seq), Inclusive: true}, 4},
				{"offset", azeventhubs.StartPosition{Offset: to.Ptr(fmt.Sprint(entries[6].Offset))}, 7},
				{"enqueued time", azeventhubs.StartPosition{EnqueuedTime: to.Ptr(time.UnixMilli(entries[9].EnqueuedTime))}, 10},
			}
			for _, st := range starts {
				pc, err := cc.NewPartitionClient("0", &azeventhubs.PartitionClientOptions{StartPosition: st.pos})
				if err != nil {
					t.Fatal(err)
				}
				var got []*azeventhubs.ReceivedEventData
				for len(got) < 20-st.first {
					evs, err := pc.ReceiveEvents(ctx, 20-st.first-len(got), nil)
					if err != nil {
						t.Fatalf("%s: ReceiveEvents: %v", st.name, err)
					}
					got = append(got, evs...)
				}
				for i, ev := range got {
					checkSDKEvent(t, ev, entries[st.first+i], st.first+i)
				}
				pc.Close(ctx)
			}
		})
	}

	t.Run("latest", func(t *testing.T) {
		cc, err := clients["tls"]()
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close(ctx)
		pc, err := cc.NewPartitionClient("1", &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Latest: to.Ptr(true)}})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close(ctx)
		before := ehSeed(t, s.Log, 1, 0, 3)
		// The link opens inside ReceiveEvents: keep appending until the
		// live reader has something, then check it got only new events.
		type result struct {
			evs []*azeventhubs.ReceivedEventData
			err error
		}
		done := make(chan result, 1)
		go func() {
			evs, err := pc.ReceiveEvents(ctx, 1, nil)
			done <- result{evs, err}
		}()
		var appended []partlog.Entry
		var res result
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	wait:
		for i := 3; ; i++ {
			select {
			case res = <-done:
				break wait
			case <-tick.C:
				appended = append(appended, ehSeed(t, s.Log, 1, i, 1)...)
			case <-ctx.Done():
				t.Fatal("no live event")
			}
		}
		if res.err != nil || len(res.evs) != 1 {
			t.Fatalf("ReceiveEvents: %v, %d events", res.err, len(res.evs))
		}
		ev := res.evs[0]
		idx := int(ev.SequenceNumber - appended[0].Seq)
		if ev.SequenceNumber <= before[2].Seq || idx < 0 || idx >= len(appended) {
			t.Fatalf("live reader got seq %d; events before it attached end at %d", ev.SequenceNumber, before[2].Seq)
		}
		checkSDKEvent(t, ev, appended[idx], 3+idx)
	})

	t.Run("owner level", func(t *testing.T) {
		cc, err := clients["emulator"]()
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close(ctx)
		open := func(level int64) *azeventhubs.PartitionClient {
			pc, err := cc.NewPartitionClient("0", &azeventhubs.PartitionClientOptions{
				StartPosition: azeventhubs.StartPosition{Earliest: to.Ptr(true)},
				OwnerLevel:    to.Ptr(level),
			})
			if err != nil {
				t.Fatal(err)
			}
			return pc
		}
		low := open(1)
		defer low.Close(ctx)
		if evs, err := low.ReceiveEvents(ctx, 1, nil); err != nil || len(evs) != 1 {
			t.Fatalf("owner level 1: %v", err)
		}
		high := open(2)
		defer high.Close(ctx)
		if evs, err := high.ReceiveEvents(ctx, 1, nil); err != nil || len(evs) != 1 {
			t.Fatalf("owner level 2: %v", err)
		}
		// The displaced reader gets ownership-lost once its prefetched
		// events are used up (300 credits prefetched, 20 events).
		var ehErr *azeventhubs.Error
		for {
			_, err := low.ReceiveEvents(ctx, 100, nil)
			if err == nil {
				continue
			}
			if !errors.As(err, &ehErr) || ehErr.Code != azeventhubs.ErrorCodeOwnershipLost {
				t.Fatalf("displaced reader: %v, want %s", err, azeventhubs.ErrorCodeOwnershipLost)
			}
			break
		}
	})
}

// TestNodeEventHubsConsumer runs the @azure/event-hubs EventHubConsumerClient
// suite (interop/node/test/eventhub.test.js) over plain AMQP with the
// emulator connection string. A background appender feeds partition 1 for
// the live-read test.
func TestNodeEventHubsConsumer(t *testing.T) {
	s := server.StartTest(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	strs, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := ehSeed(t, s.Log, 0, 0, 10)
	waitClockPast(first[9].EnqueuedTime)
	entries := append(first, ehSeed(t, s.Log, 0, 10, 10)...)
	ehSeed(t, s.Log, 1, 0, 5)

	// Node 20 may resolve localhost to ::1; the hub listens on 127.0.0.1.
	_, port, _ := net.SplitHostPort(s.AMQPAddr)
	connStr := strings.Replace(strs.EmulatorE, "sb://"+s.Options.HostName+":"+port, "sb://127.0.0.1:"+port, 1)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 5; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := s.Log.Append(ctx, 1, ehRecord(t, i)); err != nil {
					t.Errorf("background append: %v", err)
					return
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	last := entries[19]
	RunNode(t, 2*time.Minute, Env(
		"EH_CONNECTION_STRING", connStr,
		"EH_NAME", s.Options.EventHubName,
		"EH_P0_COUNT", 20,
		"EH_P0_LAST_OFFSET", last.Offset,
		"EH_P0_LAST_TIME", last.EnqueuedTime,
		"EH_P0_OFFSET_7", entries[7].Offset,
		"EH_P0_TIME_9", entries[9].EnqueuedTime,
		"EH_P1_BEFORE", 5,
	), "test/eventhub.test.js")
}

// TestTelemetryEndToEnd: a device sends telemetry through the hub's ingest
// (go-amqp, SASL PLAIN with a device token) and an azeventhubs consumer on
// the built-in endpoint reads exactly those messages with the hub's
// iothub-* annotations and the Event Hubs x-opt values.
func TestTelemetryEndToEnd(t *testing.T) {
	const devKey = "ZTJlLWRldmljZS1rZXktZm9yLWV2ZW50aHViLXRlc3Q="
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "e2e-dev", PrimaryKey: devKey, SecondaryKey: devKey}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	key, err := base64.StdEncoding.DecodeString(devKey)
	if err != nil {
		t.Fatal(err)
	}
	host := s.Options.HostName
	dc, err := goamqp.Dial(ctx, "amqps://"+s.AMQPSAddr, &goamqp.ConnOptions{
		TLSConfig: s.ClientTLS,
		HostName:  host,
		SASLType:  goamqp.SASLTypePlain("e2e-dev@sas."+s.Options.HubName, sas.Sign(host+"/devices/e2e-dev", key, "", time.Now().Add(time.Hour))),
	})
	if err != nil {
		t.Fatalf("device connect: %v", err)
	}
	defer dc.Close()
	sess, err := dc.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx, "/devices/e2e-dev/messages/events", nil)
	if err != nil {
		t.Fatalf("device events link: %v", err)
	}
	sentAt := time.Now()
	for i := range 3 {
		m := &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: fmt.Sprintf("m%d", i), ContentType: to.Ptr("application/json")},
			ApplicationProperties: map[string]any{"index": int64(i)},
			Data:                  [][]byte{fmt.Appendf(nil, `{"n":%d}`, i)},
		}
		// Send returns once the hub accepted the message, after it is durable.
		if err := snd.Send(ctx, m, nil); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}

	strs, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := azeventhubs.NewConsumerClientFromConnectionString(strs.EventHub, "", azeventhubs.DefaultConsumerGroup,
		&azeventhubs.ConsumerClientOptions{TLSConfig: s.ClientTLS, CustomEndpoint: s.AMQPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(ctx)
	hp, err := cc.GetEventHubProperties(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One device's messages share one partition.
	part := ""
	for _, id := range hp.PartitionIDs {
		pp, err := cc.GetPartitionProperties(ctx, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case pp.IsEmpty:
		case part != "":
			t.Fatalf("events in partitions %s and %s", part, id)
		case pp.LastEnqueuedSequenceNumber != 2:
			t.Fatalf("partition %s: last sequence number %d, want 2", id, pp.LastEnqueuedSequenceNumber)
		default:
			part = id
		}
	}
	if part == "" {
		t.Fatal("no partition holds the device's events")
	}
	pc, err := cc.NewPartitionClient(part, &azeventhubs.PartitionClientOptions{StartPosition: azeventhubs.StartPosition{Earliest: to.Ptr(true)}})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	var evs []*azeventhubs.ReceivedEventData
	for len(evs) < 3 {
		got, err := pc.ReceiveEvents(ctx, 3-len(evs), nil)
		if err != nil {
			t.Fatalf("ReceiveEvents: %v", err)
		}
		evs = append(evs, got...)
	}
	for i, ev := range evs {
		if ev.SequenceNumber != int64(i) || string(ev.Body) != fmt.Sprintf(`{"n":%d}`, i) || ev.Properties["index"] != int64(i) ||
			ev.MessageID == nil || *ev.MessageID != fmt.Sprintf("m%d", i) {
			t.Errorf("event %d: seq %d body %q properties %v", i, ev.SequenceNumber, ev.Body, ev.Properties)
		}
		if ev.EnqueuedTime == nil || ev.EnqueuedTime.Before(sentAt.Truncate(time.Millisecond)) || ev.Offset == "" {
			t.Errorf("event %d: enqueued %v offset %q", i, ev.EnqueuedTime, ev.Offset)
		}
		sp := ev.SystemProperties
		if sp["iothub-connection-device-id"] != "e2e-dev" || sp["iothub-message-source"] != "Telemetry" {
			t.Errorf("event %d: system properties %v", i, sp)
		}
		if _, ok := sp["iothub-enqueuedtime"].(time.Time); !ok {
			t.Errorf("event %d: iothub-enqueuedtime %#v", i, sp["iothub-enqueuedtime"])
		}
	}
}
