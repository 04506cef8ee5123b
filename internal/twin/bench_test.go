package twin_test

import (
	"fmt"
	"testing"
)

// BenchmarkDeviceGetOverAMQP is one device's twin GET round trip: request
// over go-amqp, registry lookup, store read, response.
func BenchmarkDeviceGetOverAMQP(b *testing.B) {
	s := startHub(b, nil)
	c := openTwin(b, dialIdentity(b, s, "d1", ""), "/devices/d1/twin", 10)
	c.call("PATCH", "/properties/reported", "seed", []byte(`{"firmware":"1.4.2","battery":87,"telemetry":{"interval":30}}`))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c.call("GET", "", fmt.Sprint(i), nil)
	}
}

// BenchmarkReportedPatchOverAMQP is one device's reported-properties PATCH
// round trip, including the synced store write.
func BenchmarkReportedPatchOverAMQP(b *testing.B) {
	s := startHub(b, nil)
	c := openTwin(b, dialIdentity(b, s, "d1", ""), "/devices/d1/twin", 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c.call("PATCH", "/properties/reported", fmt.Sprint(i), []byte(fmt.Sprintf(`{"counter":%d}`, i)))
	}
}
