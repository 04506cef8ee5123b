package hub

import "testing"

func TestParseAddress(t *testing.T) {
	tests := []struct {
		addr string
		want Route
	}{
		{"$cbs", Route{Kind: KindCBS, Path: "/$cbs"}},
		{"/devices/d1/messages/events", Route{Kind: KindDeviceEvents, DeviceID: "d1", Path: "/devices/d1/messages/events"}},
		{"amqps://hub.azure-devices.net:5671/devices/d%231/messages/deviceBound", Route{Kind: KindDeviceBound, DeviceID: "d#1", Path: "/devices/d#1/messages/deviceBound"}},
		{"/DEVICES/d1/modules/m1/messages/events", Route{Kind: KindDeviceEvents, DeviceID: "d1", ModuleID: "m1", Path: "/DEVICES/d1/modules/m1/messages/events"}},
		{"/devices/d1/twin", Route{Kind: KindTwin, DeviceID: "d1", Path: "/devices/d1/twin"}},
		{"/devices/d1/modules/m/twin", Route{Kind: KindTwin, DeviceID: "d1", ModuleID: "m", Path: "/devices/d1/modules/m/twin"}},
		{"/devices/d1/methods/devicebound", Route{Kind: KindMethods, DeviceID: "d1", Path: "/devices/d1/methods/devicebound"}},
		{"/messages/devicebound", Route{Kind: KindServiceC2D, Path: "/messages/devicebound"}},
		{"/messages/serviceBound/feedback", Route{Kind: KindFeedback, Path: "/messages/serviceBound/feedback"}},
		{"messages/servicebound/filenotifications", Route{Kind: KindFileNotifications, Path: "/messages/servicebound/filenotifications"}},
		{"/messages/events/ConsumerGroups/$Default/Partitions/3", Route{Kind: KindEventsRedirect, ConsumerGroup: "$Default", Partition: "3", Path: "/messages/events/ConsumerGroups/$Default/Partitions/3"}},
		{"/messages/events/$management", Route{Kind: KindEventsRedirect, Management: true, Path: "/messages/events/$management"}},
		{"myhub/$management", Route{Kind: KindEHManagement, Entity: "myhub", Path: "/myhub/$management"}},
		{"$management", Route{Kind: KindEHManagement, Entity: "myhub", Path: "/myhub/$management"}},
		{"myhub/ConsumerGroups/$default/Partitions/0", Route{Kind: KindEHPartition, Entity: "myhub", ConsumerGroup: "$default", Partition: "0", Path: "/myhub/ConsumerGroups/$default/Partitions/0"}},
		{"amqps://localhost/myhub", Route{Kind: KindEHSend, Entity: "myhub", Path: "/myhub"}},
		{"/devices/d1/messages", Route{}},
		{"/devices//messages/events", Route{}},
		{"/devices/d1/messages/events/extra", Route{}},
		{"/nothing/here", Route{}},
		{"", Route{}},
		{"/devices/100%pure/messages/events", Route{Kind: KindDeviceEvents, DeviceID: "100%pure", Path: "/devices/100%pure/messages/events"}},
	}
	for _, tc := range tests {
		if got := ParseAddress(tc.addr, "myhub"); got != tc.want {
			t.Errorf("ParseAddress(%q) = %+v, want %+v", tc.addr, got, tc.want)
		}
	}
}

func TestAudienceCovers(t *testing.T) {
	tests := []struct {
		resource, name string
		want           bool
	}{
		{"hub.example/devices/d1", "hub.example%2Fdevices%2Fd1", true},
		{"hub.example/devices/d1", "hub.example/devices/d1", true},
		{"HUB.example/devices/d1", "amqps://hub.example:5671/devices/d1/", true},
		{"hub.example", "amqps://hub.example:5671/", true},
		{"hub.example", "hub.example/devices/d1", true},
		{"hub.example/devices/d2", "hub.example%2Fdevices%2Fd1", false},
		{"hub.example/devices/d1", "hub.example/devices/d10", false},
		{"hub.example/devices/d1", "hub.example", false},
		{"sb://hub.example/myhub", "sb://hub.example/myhub/ConsumerGroups/$default/Partitions/0", true},
		{"other.example", "hub.example", false},
		// An id with a literal "%41": the encoded name decodes to the id.
		{"hub.example/devices/a%41b", "hub.example%2Fdevices%2Fa%2541b", true},
		{"hub.example/devices/a%41b", "hub.example/devices/a%41b", true},
	}
	for _, tc := range tests {
		if got := audienceCovers(tc.resource, tc.name); got != tc.want {
			t.Errorf("audienceCovers(%q, %q) = %v, want %v", tc.resource, tc.name, got, tc.want)
		}
	}
}
