package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"amqphub/internal/registry"
	"amqphub/internal/sas"
)

const (
	host = "myhub.azure-devices.net"
	key1 = "a2V5MWtleTFrZXkxa2V5MWtleTFrZXkxa2V5MWtleTE="
	key2 = "a2V5MmtleTJrZXkya2V5MmtleTJrZXkya2V5MmtleTI="
	key3 = "a2V5M2tleTNrZXkza2V5M2tleTNrZXkza2V5M2tleTM="
)

var (
	now    = time.Unix(1_700_000_000, 0)
	future = now.Add(time.Hour)
)

func k(t testing.TB, b64 string) []byte {
	t.Helper()
	b, err := sas.DecodeIoTHubKey(b64)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type fixture struct {
	reg  *registry.PebbleStore
	auth *Authority
	gen  map[string]string // device or device/module → generationId
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctx := context.Background()
	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	f := &fixture{reg: reg, gen: map[string]string{}}
	sasAuth := registry.Authentication{Type: registry.AuthSAS, SymmetricKey: registry.SymmetricKey{PrimaryKey: key1, SecondaryKey: key2}}
	devices := []registry.Device{
		{DeviceID: "d1", Authentication: sasAuth},
		{DeviceID: "off", Status: registry.StatusDisabled, Authentication: sasAuth},
		{DeviceID: "we#ird", Authentication: sasAuth},
		{DeviceID: "pct%41", Authentication: sasAuth},
		{DeviceID: "x509", Authentication: registry.Authentication{Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "AB"}}},
	}
	for _, d := range devices {
		got, err := reg.CreateDevice(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		f.gen[d.DeviceID] = got.GenerationID
	}
	modAuth := registry.Authentication{Type: registry.AuthSAS, SymmetricKey: registry.SymmetricKey{PrimaryKey: key3, SecondaryKey: key2}}
	for _, m := range []registry.Module{{DeviceID: "d1", ModuleID: "m1", Authentication: modAuth}, {DeviceID: "off", ModuleID: "m", Authentication: modAuth}} {
		got, err := reg.CreateModule(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		f.gen[m.DeviceID+"/"+m.ModuleID] = got.GenerationID
	}
	f.auth, err = New(Config{
		HostName:           host,
		Aliases:            []string{"localhost", "127.0.0.1"},
		EventHubsHostNames: []string{"ehns.example"},
		Registry:           reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func sigOf(tok string) string {
	_, rest, _ := strings.Cut(tok, "sig=")
	s, _, _ := strings.Cut(rest, "&")
	return s
}

func TestAuthenticate(t *testing.T) {
	f := newFixture(t)
	owner := k(t, DevIoTHubOwnerPrimaryKey)
	tests := []struct {
		name       string
		token      string
		want       Identity // Expiry and Audience are checked separately
		wantReason string   // non-empty: must fail with this in the reason
	}{
		{"device primary key", sas.Sign(host+"/devices/d1", k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "d1", Rights: DeviceConnect, Path: "/devices/d1"}, ""},
		{"device secondary key", sas.Sign(host+"/devices/d1", k(t, key2), "", future),
			Identity{Kind: KindDevice, DeviceID: "d1", Rights: DeviceConnect, Path: "/devices/d1"}, ""},
		{"raw sr, upper-case host, keyword case", sas.SignEncoded("MyHub.Azure-Devices.NET/Devices/d1", k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "d1", Rights: DeviceConnect, Path: "/Devices/d1"}, ""},
		{"alias host with port", sas.Sign("localhost:5671/devices/d1", k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "d1", Rights: DeviceConnect, Path: "/devices/d1"}, ""},
		{"trailing slash", sas.Sign(host+"/devices/d1/", k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "d1", Rights: DeviceConnect, Path: "/devices/d1"}, ""},
		{"id double-encoded (C# style)", sas.SignEncoded(sas.EncodeURIComponent(host+"/devices/"+url.PathEscape("we#ird")), k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "we#ird", Rights: DeviceConnect, Path: "/devices/we%23ird"}, ""},
		{"id containing a percent sign", sas.Sign(host+"/devices/pct%41", k(t, key1), "", future),
			Identity{Kind: KindDevice, DeviceID: "pct%41", Rights: DeviceConnect, Path: "/devices/pct%41"}, ""},
		{"module key", sas.Sign(host+"/devices/d1/modules/m1", k(t, key3), "", future),
			Identity{Kind: KindModule, DeviceID: "d1", ModuleID: "m1", Rights: DeviceConnect, Path: "/devices/d1/modules/m1"}, ""},
		{"hub owner", sas.SignEncoded(host, owner, "iothubowner", future),
			Identity{Kind: KindPolicy, PolicyName: "iothubowner", Rights: RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect}, ""},
		{"policy name case-insensitive, secondary key", sas.SignEncoded(host, k(t, DevIoTHubOwnerSecondaryKey), "IoTHubOwner", future),
			Identity{Kind: KindPolicy, PolicyName: "iothubowner", Rights: RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect}, ""},
		{"service policy", sas.Sign(host, k(t, DevServicePrimaryKey), "service", future),
			Identity{Kind: KindPolicy, PolicyName: "service", Rights: ServiceConnect}, ""},
		{"policy scoped to a path", sas.Sign(host+"/messages/events", k(t, DevServicePrimaryKey), "service", future),
			Identity{Kind: KindPolicy, PolicyName: "service", Rights: ServiceConnect, Path: "/messages/events"}, ""},
		{"device policy acting as a device", sas.Sign(host+"/devices/d1", k(t, DevDevicePrimaryKey), "device", future),
			Identity{Kind: KindDevice, PolicyName: "device", DeviceID: "d1", Rights: DeviceConnect, Path: "/devices/d1"}, ""},
		{"device policy acting as a module", sas.Sign(host+"/devices/d1/modules/m1", k(t, DevDevicePrimaryKey), "device", future),
			Identity{Kind: KindModule, PolicyName: "device", DeviceID: "d1", ModuleID: "m1", Rights: DeviceConnect, Path: "/devices/d1/modules/m1"}, ""},

		{"wrong device key", sas.Sign(host+"/devices/d1", k(t, key3), "", future), Identity{}, "signature does not match the keys of device"},
		{"expired", sas.Sign(host+"/devices/d1", k(t, key1), "", now), Identity{}, "expired"},
		{"other hub", sas.Sign("otherhub.azure-devices.net/devices/d1", k(t, key1), "", future), Identity{}, "not this hub"},
		{"device key at hub scope", sas.Sign(host, k(t, key1), "", future), Identity{}, "without skn must be scoped"},
		{"device key on a sub-path", sas.Sign(host+"/devices/d1/messages/events", k(t, key1), "", future), Identity{}, "without skn must be scoped"},
		{"unknown device", sas.Sign(host+"/devices/ghost", k(t, key1), "", future), Identity{}, "not registered"},
		{"unknown module", sas.Sign(host+"/devices/d1/modules/ghost", k(t, key3), "", future), Identity{}, "not registered"},
		{"disabled device", sas.Sign(host+"/devices/off", k(t, key1), "", future), Identity{}, "disabled"},
		{"module of disabled device", sas.Sign(host+"/devices/off/modules/m", k(t, key3), "", future), Identity{}, "disabled"},
		{"x509 device", sas.Sign(host+"/devices/x509", k(t, key1), "", future), Identity{}, "not SAS"},
		{"module signed with device key", sas.Sign(host+"/devices/d1/modules/m1", k(t, key1), "", future), Identity{}, "signature does not match the keys of module"},
		{"wrong policy key", sas.Sign(host, k(t, DevServicePrimaryKey), "iothubowner", future), Identity{}, "signature does not match the keys of policy"},
		{"unknown policy", sas.Sign(host, owner, "nobody", future), Identity{}, "unknown shared access policy"},
		{"service policy cannot act as device", sas.Sign(host+"/devices/d1", k(t, DevServicePrimaryKey), "service", future), Identity{}, "lacks DeviceConnect"},
		{"device policy, disabled device", sas.Sign(host+"/devices/off", k(t, DevDevicePrimaryKey), "device", future), Identity{}, "disabled"},
		{"device policy, unknown device", sas.Sign(host+"/devices/ghost", k(t, DevDevicePrimaryKey), "device", future), Identity{}, "not registered"},
		{"signed with key text (Event Hubs convention)", sas.Sign(host, []byte(DevIoTHubOwnerPrimaryKey), "iothubowner", future), Identity{}, "signature does not match"},
		{"malformed", "SharedAccessSignature sr=" + host, Identity{}, "missing field"},
		{"not a SAS token", "Bearer eyJhbGciOi", Identity{}, "prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := f.auth.Authenticate(context.Background(), tt.token, now)
			if tt.wantReason != "" {
				if err == nil {
					t.Fatalf("authenticated as %+v", id)
				}
				if !errors.Is(err, ErrUnauthorized) {
					t.Fatalf("error %v is not ErrUnauthorized", err)
				}
				if !strings.Contains(err.Error(), tt.wantReason) {
					t.Fatalf("error %q does not contain %q", err, tt.wantReason)
				}
				for _, secret := range []string{sigOf(tt.token), key1, key2, key3, DevIoTHubOwnerPrimaryKey, DevServicePrimaryKey} {
					if secret != "" && strings.Contains(err.Error(), secret) {
						t.Fatalf("error %q leaks a secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			want := tt.want
			want.Expiry = future.UTC()
			switch want.Kind {
			case KindDevice:
				want.GenerationID = f.gen[want.DeviceID]
			case KindModule:
				want.GenerationID = f.gen[want.DeviceID+"/"+want.ModuleID]
			}
			p, _ := sas.Parse(tt.token)
			want.Audience = p.Resource
			if id != want {
				t.Fatalf("identity\n got %+v\nwant %+v", id, want)
			}
		})
	}
}

func TestMalformedTokenError(t *testing.T) {
	f := newFixture(t)
	_, err := f.auth.Authenticate(context.Background(), "SharedAccessSignature sr=x&se=1", now)
	if !errors.Is(err, ErrMalformedToken) || !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrMalformedToken and ErrUnauthorized", err)
	}
	_, err = f.auth.Authenticate(context.Background(), sas.Sign(host+"/devices/d1", k(t, key3), "", future), now)
	if errors.Is(err, ErrMalformedToken) || !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad signature err = %v, want ErrUnauthorized only", err)
	}
}

func TestAuthenticateEventHubs(t *testing.T) {
	f := newFixture(t)
	svc := DevServicePrimaryKey
	goStyle := func(aud, keyText, skn string) string {
		sr := strings.ToLower(url.QueryEscape(aud))
		return sas.SignEncoded(sr, []byte(keyText), skn, future)
	}
	tests := []struct {
		name       string
		token      string
		wantPath   string
		wantPolicy string
		wantReason string
	}{
		{"go style amqps", goStyle("amqps://"+host+"/iothub-ehub-myhub/ConsumerGroups/$Default/Partitions/0", svc, "service"),
			// The Go SDK lower-cases the whole escaped audience.
			"/iothub-ehub-myhub/consumergroups/$default/partitions/0", "service", ""},
		{"js style sb with port", sas.Sign("sb://localhost:5671/myhub/$management", []byte(svc), "service", future),
			"/myhub/$management", "service", ""},
		{"namespace scope", sas.Sign("sb://"+host+"/", []byte(DevIoTHubOwnerPrimaryKey), "iothubowner", future), "", "iothubowner", ""},
		{"extra Event Hubs host", sas.Sign("sb://ehns.example/myhub", []byte(svc), "service", future), "/myhub", "service", ""},
		{"secondary key", sas.Sign("sb://"+host+"/myhub", []byte(DevServiceSecondaryKey), "service", future), "/myhub", "service", ""},
		{"IoT convention also accepted", sas.Sign("sb://"+host+"/myhub", k(t, svc), "service", future), "/myhub", "service", ""},

		{"no skn", sas.Sign("sb://"+host+"/myhub", []byte(svc), "", future), "", "", "must name a shared access policy"},
		{"wrong key", sas.Sign("sb://"+host+"/myhub", []byte(DevDevicePrimaryKey), "service", future), "", "", "signature does not match"},
		{"unknown policy", sas.Sign("sb://"+host+"/myhub", []byte(svc), "RootManageSharedAccessKey", future), "", "", "unknown shared access policy"},
		{"other host", sas.Sign("sb://elsewhere.servicebus.windows.net/myhub", []byte(svc), "service", future), "", "", "not this hub"},
		{"bad scheme", sas.Sign("ftp://"+host+"/myhub", []byte(svc), "service", future), "", "", "scheme"},
		{"expired", sas.Sign("sb://"+host+"/myhub", []byte(svc), "service", now.Add(-time.Second)), "", "", "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := f.auth.AuthenticateEventHubs(context.Background(), tt.token, now)
			if tt.wantReason != "" {
				if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), tt.wantReason) {
					t.Fatalf("err = %v, want unauthorized containing %q", err, tt.wantReason)
				}
				if strings.Contains(err.Error(), sigOf(tt.token)) || strings.Contains(err.Error(), svc) {
					t.Fatalf("error %q leaks a secret", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("AuthenticateEventHubs: %v", err)
			}
			if id.Kind != KindPolicy || id.PolicyName != tt.wantPolicy || id.Path != tt.wantPath || !id.Expiry.Equal(future) {
				t.Fatalf("identity = %+v", id)
			}
			pol, _ := f.auth.Policy(tt.wantPolicy)
			if id.Rights != pol.Rights {
				t.Fatalf("rights = %v, want %v", id.Rights, pol.Rights)
			}
		})
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		path, target string
		want         bool
	}{
		{"", "/devices/d1/messages/events", true},
		{"/devices/d1", "/devices/d1/messages/events", true},
		{"/devices/d1", "/DEVICES/D1/messages/events", true},
		{"/devices/d1", "/devices/d1", true},
		{"/devices/d1", "/devices/d1/", true},
		{"/devices/d1", "/devices/d10/messages/events", false},
		{"/devices/d1", "/devices", false},
		{"/myhub", "/myhub/ConsumerGroups/$default/Partitions/0", true},
		{"/myhub", "/otherhub/ConsumerGroups/$default/Partitions/0", false},
	}
	for _, tt := range tests {
		if got := (Identity{Path: tt.path}).Covers(tt.target); got != tt.want {
			t.Errorf("Identity{Path:%q}.Covers(%q) = %v, want %v", tt.path, tt.target, got, tt.want)
		}
	}
}

func TestRights(t *testing.T) {
	all := RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect
	if s := all.String(); s != "RegistryRead, RegistryWrite, ServiceConnect, DeviceConnect" {
		t.Errorf("String() = %q", s)
	}
	if s := Rights(0).String(); s != "None" {
		t.Errorf("zero String() = %q", s)
	}
	parses := []struct {
		in   string
		want Rights
	}{
		{"RegistryRead, RegistryWrite", RegistryRead | RegistryWrite},
		{"serviceconnect|deviceconnect", ServiceConnect | DeviceConnect},
		{all.String(), all},
	}
	for _, tt := range parses {
		got, err := ParseRights(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRights(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", " , ", "RegistryRead, Root"} {
		if _, err := ParseRights(bad); err == nil {
			t.Errorf("ParseRights(%q) succeeded", bad)
		}
	}
	if !all.Has(ServiceConnect|RegistryRead) || ServiceConnect.Has(ServiceConnect|RegistryRead) {
		t.Error("Has is wrong")
	}
}

func TestDefaultPolicies(t *testing.T) {
	want := map[string]Rights{
		"iothubowner":       RegistryRead | RegistryWrite | ServiceConnect | DeviceConnect,
		"service":           ServiceConnect,
		"device":            DeviceConnect,
		"registryRead":      RegistryRead,
		"registryReadWrite": RegistryRead | RegistryWrite,
	}
	pols := DefaultPolicies()
	if len(pols) != len(want) {
		t.Fatalf("%d default policies", len(pols))
	}
	for _, p := range pols {
		if want[p.Name] != p.Rights {
			t.Errorf("policy %q rights %v, want %v", p.Name, p.Rights, want[p.Name])
		}
		for _, key := range []string{p.PrimaryKey, p.SecondaryKey} {
			b, err := sas.DecodeIoTHubKey(key)
			if err != nil || !strings.HasPrefix(string(b), "amqphub-dev/"+p.Name+"/") {
				t.Errorf("policy %q key %q decodes to %q, %v", p.Name, key, b, err)
			}
		}
	}
}

func TestNewValidation(t *testing.T) {
	reg := &registry.PebbleStore{}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no host", Config{Registry: reg}, "HostName is required"},
		{"host with path", Config{HostName: "h/x", Registry: reg}, "bare host name"},
		{"no registry", Config{HostName: "h"}, "Registry is required"},
		{"duplicate policy", Config{HostName: "h", Registry: reg, Policies: []Policy{{"a", key1, "", RegistryRead}, {"A", key2, "", RegistryRead}}}, "defined twice"},
		{"bad key", Config{HostName: "h", Registry: reg, Policies: []Policy{{"a", "not-base64!", "", RegistryRead}}}, "key 1"},
		{"no key", Config{HostName: "h", Registry: reg, Policies: []Policy{{"a", "", "", RegistryRead}}}, "no primary key"},
		{"no rights", Config{HostName: "h", Registry: reg, Policies: []Policy{{"a", key1, "", 0}}}, "invalid rights"},
		{"no name", Config{HostName: "h", Registry: reg, Policies: []Policy{{"", key1, "", RegistryRead}}}, "no name"},
		{"bad name", Config{HostName: "h", Registry: reg, Policies: []Policy{{"a&b", key1, "", RegistryRead}}}, "contains"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "not-base64!") {
				t.Fatalf("error %q echoes the key", err)
			}
		})
	}
	a, err := New(Config{HostName: "MyHub.example.com:443", Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if a.HostName() != "MyHub.example.com" || a.HubName() != "MyHub" {
		t.Fatalf("host %q hub %q", a.HostName(), a.HubName())
	}
}

// TestAuthenticateConcurrentWithRegistryChanges authenticates from several
// goroutines while the device is disabled and re-enabled, checking (under
// -race) that the path is safe and that a disabled device is refused as
// soon as the registry write returns.
func TestAuthenticateConcurrentWithRegistryChanges(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	tok := sas.Sign(host+"/devices/d1", k(t, key1), "", future)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	unexpected := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := f.auth.Authenticate(ctx, tok, now)
				if err != nil && !strings.Contains(err.Error(), "disabled") {
					unexpected <- err
					return
				}
			}
		}()
	}
	for i := range 20 {
		d, err := f.reg.GetDevice(ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		d.Status = registry.StatusDisabled
		if i%2 == 1 {
			d.Status = registry.StatusEnabled
		}
		if _, err := f.reg.ReplaceDevice(ctx, d, ""); err != nil {
			t.Fatal(err)
		}
		_, err = f.auth.Authenticate(ctx, tok, now)
		if (d.Status == registry.StatusDisabled) != (err != nil) {
			t.Fatalf("round %d: status %s, Authenticate err = %v", i, d.Status, err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-unexpected:
		t.Fatalf("concurrent Authenticate: %v", err)
	default:
	}
}

func BenchmarkAuthenticateDevice(b *testing.B) {
	f := newFixture(b)
	tok := sas.Sign(host+"/devices/d1", k(b, key1), "", future)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.auth.Authenticate(ctx, tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAuthenticatePolicy(b *testing.B) {
	f := newFixture(b)
	tok := sas.SignEncoded(host, k(b, DevServicePrimaryKey), "service", future)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.auth.Authenticate(ctx, tok, now); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleAuthority_Authenticate() {
	reg, _ := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	defer reg.Close()
	a, _ := New(Config{HostName: "myhub.example", Registry: reg})
	key, _ := sas.DecodeIoTHubKey(DevServicePrimaryKey)
	tok := sas.SignEncoded("myhub.example", key, PolicyService, time.Unix(2_000_000_000, 0))
	id, err := a.Authenticate(context.Background(), tok, time.Unix(1_900_000_000, 0))
	fmt.Println(id.Kind, id.PolicyName, id.Rights, err)
	// Output: policy service ServiceConnect <nil>
}
