package auth

import (
	"fmt"
	"strings"
)

// Rights is a set of IoT Hub shared-access-policy permissions.
type Rights uint8

// The IoT Hub permissions.
const (
	// RegistryRead allows reading the identity registry.
	RegistryRead Rights = 1 << iota
	// RegistryWrite allows changing the identity registry.
	RegistryWrite
	// ServiceConnect allows the service-facing endpoints: C2D send,
	// feedback, file notifications, the Event-Hub-compatible endpoint,
	// twins and methods.
	ServiceConnect
	// DeviceConnect allows acting as any device.
	DeviceConnect

	allRights = RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect
)

var rightNames = []struct {
	r    Rights
	name string
}{
	{RegistryRead, "RegistryRead"},
	{RegistryWrite, "RegistryWrite"},
	{ServiceConnect, "ServiceConnect"},
	{DeviceConnect, "DeviceConnect"},
}

// Has reports whether r includes every right in want.
func (r Rights) Has(want Rights) bool { return r&want == want }

// String formats r the way IoT Hub lists a policy's rights:
// "RegistryRead, ServiceConnect".
func (r Rights) String() string {
	var parts []string
	for _, n := range rightNames {
		if r&n.r != 0 {
			parts = append(parts, n.name)
		}
	}
	if len(parts) == 0 {
		return "None"
	}
	return strings.Join(parts, ", ")
}

// ParseRights reads a list of right names separated by commas, '|' or
// spaces (case-insensitive), e.g. "RegistryRead, RegistryWrite".
func ParseRights(s string) (Rights, error) {
	var r Rights
	fields := strings.FieldsFunc(s, func(c rune) bool { return c == ',' || c == '|' || c == ' ' || c == '\t' })
	if len(fields) == 0 {
		return 0, fmt.Errorf("parse rights: no rights given")
	}
	for _, f := range fields {
		found := false
		for _, n := range rightNames {
			if strings.EqualFold(f, n.name) {
				r |= n.r
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("parse rights: unknown right %q (want RegistryRead, RegistryWrite, ServiceConnect or DeviceConnect)", f)
		}
	}
	return r, nil
}

// Policy is a shared access policy: a named pair of keys with rights.
type Policy struct {
	Name string
	// PrimaryKey and SecondaryKey are base64, as in connection strings.
	PrimaryKey   string
	SecondaryKey string
	Rights       Rights
}

// Well-known DEVELOPMENT-ONLY keys of the default policies. They are public
// (they are in this source file), so anyone can sign tokens with them: a
// hub that is reachable by others must replace them through configuration.
// Each decodes to readable ASCII such as "amqphub-dev/service/primary.....",
// which makes a development key easy to recognise in a connection string.
const (
	DevIoTHubOwnerPrimaryKey         = "YW1xcGh1Yi1kZXYvaW90aHVib3duZXIvcHJpbWFyeS4="
	DevIoTHubOwnerSecondaryKey       = "YW1xcGh1Yi1kZXYvaW90aHVib3duZXIvc2Vjb25kYXJ5"
	DevServicePrimaryKey             = "YW1xcGh1Yi1kZXYvc2VydmljZS9wcmltYXJ5Li4uLi4="
	DevServiceSecondaryKey           = "YW1xcGh1Yi1kZXYvc2VydmljZS9zZWNvbmRhcnkuLi4="
	DevDevicePrimaryKey              = "YW1xcGh1Yi1kZXYvZGV2aWNlL3ByaW1hcnkuLi4uLi4="
	DevDeviceSecondaryKey            = "YW1xcGh1Yi1kZXYvZGV2aWNlL3NlY29uZGFyeS4uLi4="
	DevRegistryReadPrimaryKey        = "YW1xcGh1Yi1kZXYvcmVnaXN0cnlSZWFkL3ByaW1hcnk="
	DevRegistryReadSecondaryKey      = "YW1xcGh1Yi1kZXYvcmVnaXN0cnlSZWFkL3NlY29uZGFyeQ=="
	DevRegistryReadWritePrimaryKey   = "YW1xcGh1Yi1kZXYvcmVnaXN0cnlSZWFkV3JpdGUvcHJpbWFyeQ=="
	DevRegistryReadWriteSecondaryKey = "YW1xcGh1Yi1kZXYvcmVnaXN0cnlSZWFkV3JpdGUvc2Vjb25kYXJ5"
)

// Names of IoT Hub's default policies.
const (
	PolicyIoTHubOwner       = "iothubowner"
	PolicyService           = "service"
	PolicyDevice            = "device"
	PolicyRegistryRead      = "registryRead"
	PolicyRegistryReadWrite = "registryReadWrite"
)

// DefaultPolicies returns IoT Hub's five default policies with the
// development keys above. Callers replace the keys (or the whole list) from
// configuration for anything but local development.
func DefaultPolicies() []Policy {
	return []Policy{
		{PolicyIoTHubOwner, DevIoTHubOwnerPrimaryKey, DevIoTHubOwnerSecondaryKey, RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect},
		{PolicyService, DevServicePrimaryKey, DevServiceSecondaryKey, ServiceConnect},
		{PolicyDevice, DevDevicePrimaryKey, DevDeviceSecondaryKey, DeviceConnect},
		{PolicyRegistryRead, DevRegistryReadPrimaryKey, DevRegistryReadSecondaryKey, RegistryRead},
		{PolicyRegistryReadWrite, DevRegistryReadWritePrimaryKey, DevRegistryReadWriteSecondaryKey, RegistryRead | RegistryWrite},
	}
}
