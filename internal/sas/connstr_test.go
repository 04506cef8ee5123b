package sas

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseIoTHubConnectionString(t *testing.T) {
	tok := Sign("h.net/devices/d1", []byte("k"), "", time.Unix(1700000000, 0))
	tests := []struct {
		name string
		in   string
		want IoTHubConnectionString
	}{
		{
			"service",
			"HostName=h.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + testKey,
			IoTHubConnectionString{HostName: "h.net", SharedAccessKeyName: "iothubowner", SharedAccessKey: testKey},
		},
		{
			"device, keys case-insensitive, trailing ;",
			"hostname=h.net;DEVICEID=d1;sharedaccesskey=" + testKey + ";",
			IoTHubConnectionString{HostName: "h.net", DeviceID: "d1", SharedAccessKey: testKey},
		},
		{
			"module with gateway",
			"HostName=h.net;DeviceId=d1;ModuleId=m1;SharedAccessKey=" + testKey + ";GatewayHostName=edge.local",
			IoTHubConnectionString{HostName: "h.net", DeviceID: "d1", ModuleID: "m1", SharedAccessKey: testKey, GatewayHostName: "edge.local"},
		},
		{
			"pre-made signature with '=' and '&' inside",
			"HostName=h.net;DeviceId=d1;SharedAccessSignature=" + tok,
			IoTHubConnectionString{HostName: "h.net", DeviceID: "d1", SharedAccessSignature: tok},
		},
		{
			"x509",
			"HostName=h.net;DeviceId=d1;x509=true",
			IoTHubConnectionString{HostName: "h.net", DeviceID: "d1", X509: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseIoTHubConnectionString(tt.in)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			again, err := ParseIoTHubConnectionString(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip via String() = %+v, %v", again, err)
			}
		})
	}
}

func TestParseIoTHubConnectionStringErrors(t *testing.T) {
	tests := []struct{ name, in, wantIn string }{
		{"empty", "", "empty"},
		{"only separators", ";;", "no key=value"},
		{"no =", "HostName", "no '='"},
		{"empty key", "=x;HostName=h", "empty key"},
		{"duplicate", "HostName=a;hostname=b;SharedAccessKeyName=p;SharedAccessKey=" + testKey, "twice"},
		{"no host", "DeviceId=d;SharedAccessKey=" + testKey, "HostName"},
		{"host with path", "HostName=h/x;DeviceId=d;SharedAccessKey=" + testKey, "bare host"},
		{"no credential", "HostName=h;DeviceId=d", "required"},
		{"two credentials", "HostName=h;DeviceId=d;SharedAccessKey=" + testKey + ";x509=true", "only one"},
		{"key without identity", "HostName=h;SharedAccessKey=" + testKey, "DeviceId or SharedAccessKeyName"},
		{"key not base64", "HostName=h;DeviceId=d;SharedAccessKey=secret!", "base64"},
		{"module without device", "HostName=h;ModuleId=m;SharedAccessKeyName=p;SharedAccessKey=" + testKey, "ModuleId requires"},
		{"bad x509", "HostName=h;DeviceId=d;x509=maybe", "x509"},
		{"bad signature", "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h", "SharedAccessSignature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseIoTHubConnectionString(tt.in)
			if !errors.Is(err, ErrBadConnectionString) {
				t.Fatalf("err = %v, want ErrBadConnectionString", err)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("error %q does not mention %q", err, tt.wantIn)
			}
			if strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), "secret!") {
				t.Fatalf("error %q leaks the key", err)
			}
		})
	}
}

func TestParseEventHubsConnectionString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want EventHubsConnectionString
	}{
		{
			"with port and entity",
			"Endpoint=sb://localhost:5672/;SharedAccessKeyName=service;SharedAccessKey=abc=;EntityPath=myhub;UseDevelopmentEmulator=true",
			EventHubsConnectionString{Endpoint: "sb://localhost:5672/", Host: "localhost:5672", SharedAccessKeyName: "service", SharedAccessKey: "abc=", EntityPath: "myhub", UseDevelopmentEmulator: true},
		},
		{
			"emulator flag as 1, no entity",
			"Endpoint=sb://h.servicebus.windows.net;SharedAccessKeyName=p;SharedAccessKey=k;UseDevelopmentEmulator=1",
			EventHubsConnectionString{Endpoint: "sb://h.servicebus.windows.net", Host: "h.servicebus.windows.net", SharedAccessKeyName: "p", SharedAccessKey: "k", UseDevelopmentEmulator: true},
		},
		{
			"amqps endpoint",
			"Endpoint=amqps://h:5671/;SharedAccessKeyName=p;SharedAccessKey=k",
			EventHubsConnectionString{Endpoint: "amqps://h:5671/", Host: "h:5671", SharedAccessKeyName: "p", SharedAccessKey: "k"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEventHubsConnectionString(tt.in)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got != tt.want {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			again, err := ParseEventHubsConnectionString(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip via String() = %+v, %v", again, err)
			}
		})
	}
}

func TestParseEventHubsConnectionStringErrors(t *testing.T) {
	tests := []struct{ name, in, wantIn string }{
		{"no endpoint", "SharedAccessKeyName=p;SharedAccessKey=k", "Endpoint is required"},
		{"https endpoint", "Endpoint=https://h/;SharedAccessKeyName=p;SharedAccessKey=k", "scheme"},
		{"no host", "Endpoint=sb:///;SharedAccessKeyName=p;SharedAccessKey=k", "no host"},
		{"bad url", "Endpoint=sb://h:port:x/;SharedAccessKeyName=p;SharedAccessKey=k", "URL"},
		{"no credential", "Endpoint=sb://h/;SharedAccessKeyName=p", "required"},
		{"key without name", "Endpoint=sb://h/;SharedAccessKey=k", "SharedAccessKeyName"},
		{"both credentials", "Endpoint=sb://h/;SharedAccessKeyName=p;SharedAccessKey=k;SharedAccessSignature=x", "only one"},
		{"bad emulator flag", "Endpoint=sb://h/;SharedAccessKeyName=p;SharedAccessKey=k;UseDevelopmentEmulator=yes", "UseDevelopmentEmulator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseEventHubsConnectionString(tt.in)
			if !errors.Is(err, ErrBadConnectionString) {
				t.Fatalf("err = %v, want ErrBadConnectionString", err)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("error %q does not mention %q", err, tt.wantIn)
			}
		})
	}
}
