package interop

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"amqphub/amqp"
	"amqphub/internal/hub"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

const (
	authDevKey      = "YXV0aC10ZXN0LWRldmljZS1rZXktMDEyMzQ1Njc4OQ=="
	authOtherKey    = "YXV0aC10ZXN0LW90aGVyLWtleS0wMTIzNDU2Nzg5MA=="
	authDisabledKey = "YXV0aC10ZXN0LWRpc2FibGVkLWtleS0wMTIzNDU2Nzg="
)

// TestNodeDeviceAuth runs interop/node/test/auth.test.js: the Node device
// SDK authenticates through CBS over AMQPS and WebSockets, renews 30-second
// tokens for 90 seconds on one connection, and gets UnauthorizedError for
// a wrong key, a disabled device and an expired token.
func TestNodeDeviceAuth(t *testing.T) {
	// The telemetry endpoint may not exist in this build; this test is
	// about authentication, so device events are accepted by a stand-in.
	accept := hub.EndpointFunc(func(req *hub.AttachRequest) *amqp.Error {
		req.Link.OnMessage(func(d *amqp.Delivery) { d.Accept() })
		return nil
	})
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "node-dev", PrimaryKey: authDevKey, SecondaryKey: authDevKey},
			{ID: "other-dev", PrimaryKey: authOtherKey, SecondaryKey: authOtherKey},
			{ID: "off-dev", PrimaryKey: authDisabledKey, SecondaryKey: authDisabledKey, Disabled: true},
		}
		o.Endpoints = map[hub.Kind]hub.Endpoint{hub.KindDeviceEvents: accept}
	})
	host := s.Options.HostName
	devKey, _ := base64.StdEncoding.DecodeString(authDevKey)
	expired := sas.Sign(host+"/devices/node-dev", devKey, "", time.Now().Add(-time.Minute))
	wrong := base64.StdEncoding.EncodeToString([]byte("definitely-not-the-key-of-node-dev"))
	stats := s.Hub.Stats()
	RunNode(t, 4*time.Minute, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"DEVICE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-dev;SharedAccessKey=%s", host, authDevKey),
		"WRONG_KEY_CS", fmt.Sprintf("HostName=%s;DeviceId=node-dev;SharedAccessKey=%s", host, wrong),
		"DISABLED_CS", fmt.Sprintf("HostName=%s;DeviceId=off-dev;SharedAccessKey=%s", host, authDisabledKey),
		"EXPIRED_SAS_CS", fmt.Sprintf("HostName=%s;DeviceId=node-dev;SharedAccessSignature=%s", host, expired),
		"RENEW_SECONDS", 90,
	), "test/auth.test.js")
	// 2 transports x 1 good open + the renewal client's opening token and
	// at least 4 renewals in 90 s (one every ~20 s).
	if got := stats.PutTokenOK.Load(); got < 2+5 {
		t.Errorf("%d put-token requests succeeded; renewal did not happen inside the connection", got)
	}
	if got := stats.PutTokenRefused.Load(); got < 4 {
		t.Errorf("%d put-token refusals, want at least 4 (wrong key, disabled, expired; both transports)", got)
	}
}
