package interop

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/c2dsvc"
	"amqphub/internal/server"
)

const (
	c2dDevKey     = "YzJkLWludGVyb3AtZGV2aWNlLWtleS0wMTIzNDU2Nzg5"
	c2dOfflineKey = "YzJkLWludGVyb3Atb2ZmbGluZS1rZXktMDEyMzQ1Njc4"
	c2dFullKey    = "YzJkLWludGVyb3AtZnVsbC1xdWV1ZS1rZXktMDEyMzQ1"
)

// TestNodeC2D runs interop/node/test/c2d.test.js: azure-iothub's
// Client.send (Amqp on 5671) sends to an azure-iot-device device (Amqp
// transport) that completes, rejects or abandons; the feedback receiver
// gets Success, Rejected and DeliveryCountExceeded for the message ids;
// a 1-second TTL gives Expired, the SDK's purge Purged, the 51st message
// DeviceMaximumQueueDepthExceededError. Defaults apply (depth 50, 10
// deliveries) except a 250 ms feedback interval, to keep the test short.
func TestNodeC2D(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "node-c2d-dev", PrimaryKey: c2dDevKey, SecondaryKey: c2dDevKey},
			{ID: "node-c2d-offline", PrimaryKey: c2dOfflineKey, SecondaryKey: c2dOfflineKey},
			{ID: "node-c2d-full", PrimaryKey: c2dFullKey, SecondaryKey: c2dFullKey},
		}
		o.C2D.FeedbackInterval = 250 * time.Millisecond
	})
	host := s.Options.HostName
	RunNode(t, 3*time.Minute, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"HOST", host,
		"DEVICE_ID", "node-c2d-dev",
		"DEVICE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-c2d-dev;SharedAccessKey=%s", host, c2dDevKey),
		"OFFLINE_ID", "node-c2d-offline",
		"FULL_ID", "node-c2d-full",
		"SERVICE_CS", serviceCS(host, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
		"MAX_DELIVERY_COUNT", strconv.Itoa(c2dsvc.DefaultMaxDeliveryCount),
		"QUEUE_DEPTH", strconv.Itoa(c2dsvc.DefaultMaxQueueDepth),
	), "test/c2d.test.js")
}
