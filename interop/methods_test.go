package interop

import (
	"context"
	"fmt"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/server"
)

const (
	methodsDevKey     = "bWV0aG9kcy1pbnRlcm9wLWRldmljZS1rZXktMDEyMzQ1"
	methodsOfflineKey = "bWV0aG9kcy1pbnRlcm9wLW9mZmxpbmUta2V5LTAxMjM0"
)

// TestNodeMethods runs interop/node/test/methods.test.js: azure-iothub's
// Client.invokeDeviceMethod calls an azure-iot-device device and module on
// the Amqp transport; offline, unknown and silent devices fail with the
// errors the SDK maps. The minimum response timeout is lowered to 1 s so
// that the timeout case takes 2 s.
func TestNodeMethods(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{
			{ID: "node-methods-dev", PrimaryKey: methodsDevKey, SecondaryKey: methodsDevKey, Modules: []string{"node-methods-mod"}},
			{ID: "node-offline-dev", PrimaryKey: methodsOfflineKey, SecondaryKey: methodsOfflineKey},
		}
		o.Methods.MinResponseTimeout = time.Second
	})
	host := s.Options.HostName
	m, err := s.Registry.GetModule(context.Background(), "node-methods-dev", "node-methods-mod")
	if err != nil {
		t.Fatal(err)
	}
	RunNode(t, 3*time.Minute, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"DEVICE_ID", "node-methods-dev",
		"DEVICE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-methods-dev;SharedAccessKey=%s", host, methodsDevKey),
		"OFFLINE_ID", "node-offline-dev",
		"MODULE_ID", "node-methods-mod",
		"MODULE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-methods-dev;ModuleId=node-methods-mod;SharedAccessKey=%s", host, m.Authentication.SymmetricKey.PrimaryKey),
		"SERVICE_CS", serviceCS(host, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
	), "test/methods.test.js")
}
