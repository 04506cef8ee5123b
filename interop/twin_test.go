package interop

import (
	"context"
	"fmt"
	"testing"
	"time"

	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
)

const twinDevKey = "dHdpbi1pbnRlcm9wLWRldmljZS1rZXktMDEyMzQ1Njc4"

// serviceCS is a service connection string of one of the default policies.
func serviceCS(host, policy, key string) string {
	return sas.IoTHubConnectionString{HostName: host, SharedAccessKeyName: policy, SharedAccessKey: key}.String()
}

// TestNodeTwin runs interop/node/test/twin.test.js: an azure-iot-device
// device and module on the Amqp transport get their twins, report
// properties and receive desired-property updates made with the
// azure-iothub Registry, which reads the reported values back. Both SDKs
// only dial the well-known ports (5671 for Amqp, 443 for REST) of the
// HostName, hence StartTestWellKnown.
func TestNodeTwin(t *testing.T) {
	s := server.StartTestWellKnown(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "node-twin-dev", PrimaryKey: twinDevKey, SecondaryKey: twinDevKey, Modules: []string{"node-twin-mod"}}}
	})
	host := s.Options.HostName
	m, err := s.Registry.GetModule(context.Background(), "node-twin-dev", "node-twin-mod")
	if err != nil {
		t.Fatal(err)
	}
	RunNode(t, 3*time.Minute, Env(
		"NODE_EXTRA_CA_CERTS", s.CAFile,
		"DEVICE_ID", "node-twin-dev",
		"DEVICE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-twin-dev;SharedAccessKey=%s", host, twinDevKey),
		"MODULE_ID", "node-twin-mod",
		"MODULE_CS", fmt.Sprintf("HostName=%s;DeviceId=node-twin-dev;ModuleId=node-twin-mod;SharedAccessKey=%s", host, m.Authentication.SymmetricKey.PrimaryKey),
		"SERVICE_CS", serviceCS(host, auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
		"REGISTRY_READ_CS", serviceCS(host, auth.PolicyRegistryRead, auth.DevRegistryReadPrimaryKey),
	), "test/twin.test.js")
}
