package interop

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
)

// TestNodeDeviceTelemetry runs interop/node/test/telemetry.test.js: the
// Node device SDK sends telemetry over AMQPS and over WebSockets, one
// device per transport; then the hub's log must hold each message once,
// in its device's partition, with body, properties, application
// properties and the hub's annotations intact, and nothing of the
// refused oversized messages.
func TestNodeDeviceTelemetry(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "node-amqp"}, {ID: "node-amqpws"}}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs := map[string]string{}
	for _, id := range []string{"node-amqp", "node-amqpws"} {
		c, err := s.DeviceConnectionString(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		cs[id] = c
	}
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	RunNode(t, 3*time.Minute, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"AMQP_DEVICE_CS", cs["node-amqp"],
		"AMQPWS_DEVICE_CS", cs["node-amqpws"],
		"RUN_ID", runID,
	), "test/telemetry.test.js")

	for _, tc := range []struct{ dev, transport string }{{"node-amqp", "Amqp"}, {"node-amqpws", "AmqpWs"}} {
		t.Run(tc.transport, func(t *testing.T) {
			d, err := s.Registry.GetDevice(ctx, tc.dev)
			if err != nil {
				t.Fatal(err)
			}
			part := telemetry.Partition(tc.dev, s.Log.Partitions())
			var got []*frames.Message
			for seq := int64(0); ; {
				recs, err := s.Log.Read(part, seq, 100, 0, nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(recs) == 0 {
					break
				}
				for _, r := range recs {
					seq = r.Seq + 1
					var m frames.Message
					if err := m.UnmarshalAMQP(r.Payload); err != nil {
						t.Fatalf("record %d does not decode: %v", r.Seq, err)
					}
					if m.Annotations[encoding.Symbol(telemetry.AnnDeviceID)] == tc.dev {
						got = append(got, &m)
					}
				}
			}
			if len(got) != 3 {
				t.Fatalf("%s: %d messages stored, want 3 (json, binary, after the refusal)", tc.dev, len(got))
			}
			ids := []string{tc.transport + "-msg-1", tc.transport + "-msg-2", tc.transport + "-msg-3"}
			for i, m := range got {
				if m.Properties == nil || m.Properties.MessageID != ids[i] {
					t.Errorf("message %d: properties %+v, want message-id %s", i, m.Properties, ids[i])
				}
				a := m.Annotations
				if a[encoding.Symbol(telemetry.AnnAuthGenerationID)] != d.GenerationID ||
					a[encoding.Symbol(telemetry.AnnMessageSource)] != "Telemetry" ||
					a[encoding.Symbol(telemetry.AnnAuthMethod)] != `{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}` {
					t.Errorf("message %d: annotations %v", i, a)
				}
				if _, ok := a[encoding.Symbol(telemetry.AnnEnqueuedTime)].(time.Time); !ok {
					t.Errorf("message %d: iothub-enqueuedtime %T", i, a[encoding.Symbol(telemetry.AnnEnqueuedTime)])
				}
			}
			p := got[0].Properties
			if p.CorrelationID != tc.transport+"-corr-1" || p.ContentType != "application/json" || p.ContentEncoding != "utf-8" || p.To != "/devices/"+tc.dev+"/messages/events" {
				t.Errorf("properties %+v", p)
			}
			if ap := got[0].ApplicationProperties; ap["temperatureAlert"] != "true" || ap["transport"] != tc.transport {
				t.Errorf("application properties %v", ap)
			}
			wantBody := fmt.Sprintf(`{"temperature":21.5,"transport":%q,"run":%q}`, tc.transport, runID)
			if len(got[0].Data) != 1 || string(got[0].Data[0]) != wantBody {
				t.Errorf("body %q, want %q", got[0].Data, wantBody)
			}
			if len(got[1].Data) != 1 || string(got[1].Data[0]) != "\x00\x01\x02\xfe\xff" {
				t.Errorf("binary body %q", got[1].Data)
			}
		})
	}
}
