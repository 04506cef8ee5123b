package interop

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azeventhubs/v2"

	"amqphub/internal/server"
	"amqphub/internal/telemetry"
)

const e2eDeviceKey = "ZTJlLWRldmljZS1rZXktZm9yLXRlc3RzLTAxMjM0NTY3"

// TestDeviceToConsumers: a Node azure-iot-device-amqp device sends
// telemetry through the hub; the Node EventHubConsumerClient (in the .js
// file) and the Go azeventhubs ConsumerClient (below) read it back with
// body, properties and device id intact.
func TestDeviceToConsumers(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "e2e-node", PrimaryKey: e2eDeviceKey, SecondaryKey: e2eDeviceKey}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs, err := s.ConnectionStrings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	part := telemetry.Partition("e2e-node", s.Log.Partitions())
	RunNode(t, 90*time.Second, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"DEVICE_CS", cs.Devices["e2e-node"],
		"DEVICE_ID", "e2e-node",
		"EH_CONNECTION_STRING", cs.EmulatorE,
		"PARTITION", part,
	), "test/e2e-device-to-consumer.test.js")

	// The same events through the Go SDK, over TLS (no emulator flag).
	cc, err := azeventhubs.NewConsumerClientFromConnectionString(cs.EventHub, "", azeventhubs.DefaultConsumerGroup,
		&azeventhubs.ConsumerClientOptions{TLSConfig: s.ClientTLS, CustomEndpoint: s.AMQPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(ctx)
	pp, err := cc.GetPartitionProperties(ctx, strconv.Itoa(part), nil)
	if err != nil {
		t.Fatalf("partition properties: %v", err)
	}
	if pp.IsEmpty || pp.LastEnqueuedSequenceNumber < 12 {
		t.Fatalf("partition properties %+v: the 13 events sent by the Node device are not counted", pp)
	}
	pc, err := cc.NewPartitionClient(strconv.Itoa(part), &azeventhubs.PartitionClientOptions{
		StartPosition: azeventhubs.StartPosition{Earliest: ptrTo(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	var got []*azeventhubs.ReceivedEventData
	for len(got) < 13 {
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		evs, err := pc.ReceiveEvents(rctx, 13-len(got), nil)
		rcancel()
		if err != nil && len(evs) == 0 {
			t.Fatalf("receive after %d events: %v", len(got), err)
		}
		got = append(got, evs...)
	}
	for k, e := range got {
		tag, i := "first", k
		if k >= 10 {
			tag, i = "live", k-10
		}
		var body struct {
			I   int    `json:"i"`
			Tag string `json:"tag"`
		}
		if err := json.Unmarshal(e.Body, &body); err != nil || body.I != i || body.Tag != tag {
			t.Fatalf("event %d body %q", k, e.Body)
		}
		if e.MessageID == nil || *e.MessageID != fmt.Sprintf("%s-%d", tag, i) {
			t.Fatalf("event %d message id %v", k, e.MessageID)
		}
		if e.Properties["tag"] != tag || e.Properties["index"] != strconv.Itoa(i) {
			t.Fatalf("event %d properties %v", k, e.Properties)
		}
		if e.SystemProperties["iothub-connection-device-id"] != "e2e-node" {
			t.Fatalf("event %d device id %v", k, e.SystemProperties["iothub-connection-device-id"])
		}
		if e.SequenceNumber != int64(k) {
			t.Fatalf("event %d has sequence number %d", k, e.SequenceNumber)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
