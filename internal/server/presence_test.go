package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/registry"
	"amqphub/internal/server"
)

// TestRegistryLiveFields: the registry routes report a device's and a
// module's connection state and time of change, and the device's C2D queue
// depth, as IoT Hub does.
func TestRegistryLiveFields(t *testing.T) {
	s := server.StartTest(t, func(o *server.Options) {
		o.Devices = []server.DeviceConfig{{ID: "d1", PrimaryKey: d1Key, SecondaryKey: d2Key, Modules: []string{"m1"}}}
	})
	get := func(path string, v any) {
		t.Helper()
		code, body := restDo(t, s, http.MethodGet, path, ownerTok(t, s), "", nil)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatal(err)
		}
	}
	var d registry.Device
	get("/devices/d1", &d)
	if d.ConnectionState != registry.Disconnected || d.CloudToDeviceMessageCount != 0 {
		t.Fatalf("before any connection: %s, %d C2D", d.ConnectionState, d.CloudToDeviceMessageCount)
	}

	before := time.Now().Add(-time.Second) // the hub's clock, seconds resolution aside
	c, err := dialPlain(t, s, "d1@sas.amqphub", deviceToken(t, "localhost", "d1", d1Key, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	get("/devices/d1", &d)
	if d.ConnectionState != registry.Connected || d.ConnectionStateUpdatedTime.Before(before) || d.LastActivityTime.Before(before) {
		t.Fatalf("connected: %s updated %v activity %v", d.ConnectionState, d.ConnectionStateUpdatedTime, d.LastActivityTime)
	}
	var ds []registry.Device
	get("/devices", &ds)
	if len(ds) != 1 || ds[0].ConnectionState != registry.Connected {
		t.Fatalf("list: %+v", ds)
	}
	var m registry.Module
	get("/devices/d1/modules/m1", &m)
	if m.ConnectionState != registry.Disconnected {
		t.Fatalf("the module never connected, but is %s", m.ConnectionState)
	}

	connected := d.ConnectionStateUpdatedTime
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		get("/devices/d1", &d)
		if d.ConnectionState == registry.Disconnected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still Connected 10 s after the connection closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d.ConnectionStateUpdatedTime.Before(connected) {
		t.Fatalf("disconnected at %v, before it connected at %v", d.ConnectionStateUpdatedTime, connected)
	}

	// C2D messages waiting for the device are counted.
	svc, err := client.NewServiceClient(fmt.Sprintf("HostName=localhost;SharedAccessKeyName=%s;SharedAccessKey=%s", auth.PolicyIoTHubOwner, auth.DevIoTHubOwnerPrimaryKey),
		&client.ServiceOptions{Address: "amqp://" + s.AMQPAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if err := svc.SendC2D(ctx, "d1", &client.Message{Body: []byte("x")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	get("/devices/d1", &d)
	if d.CloudToDeviceMessageCount != 2 {
		t.Fatalf("cloudToDeviceMessageCount %d, want 2", d.CloudToDeviceMessageCount)
	}
}
