package auth

import (
	"context"
	"errors"
	"strings"
	"testing"

	"amqphub/internal/sas"
)

func TestParseSASLPlainUser(t *testing.T) {
	tests := []struct {
		in   string
		want SASLUser
	}{
		{"iothubowner@sas.root.myhub", SASLUser{Kind: KindPolicy, PolicyName: "iothubowner", HubName: "myhub"}},
		{"service@SAS.Root.MyHub", SASLUser{Kind: KindPolicy, PolicyName: "service", HubName: "MyHub"}},
		{"my%20policy@sas.root.myhub.azure-devices.net", SASLUser{Kind: KindPolicy, PolicyName: "my policy", HubName: "myhub.azure-devices.net"}},
		{"d1@sas.myhub", SASLUser{Kind: KindDevice, DeviceID: "d1", HubName: "myhub"}},
		{"a+b%23c@sas.myhub", SASLUser{Kind: KindDevice, DeviceID: "a+b#c", HubName: "myhub"}},
		{"user@domain@sas.myhub", SASLUser{Kind: KindDevice, DeviceID: "user@domain", HubName: "myhub"}},
		{"d1/modules/m1@sas.myhub", SASLUser{Kind: KindModule, DeviceID: "d1", ModuleID: "m1", HubName: "myhub"}},
		{"d1/Modules/%24edgeAgent@sas.myhub", SASLUser{Kind: KindModule, DeviceID: "d1", ModuleID: "$edgeAgent", HubName: "myhub"}},
		{"d1@myhub", SASLUser{Kind: KindDevice, DeviceID: "d1", HubName: "myhub"}},
		{"d1/modules/m1@myhub", SASLUser{Kind: KindModule, DeviceID: "d1", ModuleID: "m1", HubName: "myhub"}},
	}
	for _, tt := range tests {
		got, err := ParseSASLPlainUser(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSASLPlainUser(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "d1", "@sas.myhub", "d1@", "d1@sas.", "p@sas.root.", "%zz@sas.myhub", "d1/modules/@sas.myhub", "/modules/m1@sas.myhub", "%@sas.root.h"} {
		if got, err := ParseSASLPlainUser(bad); err == nil {
			t.Errorf("ParseSASLPlainUser(%q) = %+v, want error", bad, got)
		}
	}
}

func TestAuthenticateSASLPlain(t *testing.T) {
	f := newFixture(t)
	devTok := sas.Sign(host+"/devices/d1", k(t, key1), "", future)
	modTok := sas.Sign(host+"/devices/d1/modules/m1", k(t, key3), "", future)
	svcTok := sas.SignEncoded(host, k(t, DevServicePrimaryKey), "service", future)
	policyDevTok := sas.Sign(host+"/devices/d1", k(t, DevDevicePrimaryKey), "device", future)
	tests := []struct {
		name, user, password string
		wantKind             Kind
		wantReason           string
	}{
		{"service policy", "service@sas.root.myhub", svcTok, KindPolicy, ""},
		{"policy name case", "SERVICE@sas.root.myhub", svcTok, KindPolicy, ""},
		{"hub given as host name", "service@sas.root." + host, svcTok, KindPolicy, ""},
		{"device", "d1@sas.myhub", devTok, KindDevice, ""},
		{"device, legacy form", "d1@myhub", devTok, KindDevice, ""},
		{"device via DeviceConnect policy", "d1@sas.myhub", policyDevTok, KindDevice, ""},
		{"module", "d1/modules/m1@sas.myhub", modTok, KindModule, ""},

		{"policy mismatch", "iothubowner@sas.root.myhub", svcTok, 0, "token is for policy"},
		{"device user, policy token", "d1@sas.myhub", svcTok, 0, "token is for policy"},
		{"policy user, device token", "service@sas.root.myhub", devTok, 0, "token is for device"},
		{"other device", "d2@sas.myhub", devTok, 0, `device "d2"`},
		{"device id case", "D1@sas.myhub", devTok, 0, `device "D1"`},
		{"module user, device token", "d1/modules/m1@sas.myhub", devTok, 0, "token is for device"},
		{"device user, module token", "d1@sas.myhub", modTok, 0, "token is for module"},
		{"wrong hub", "d1@sas.otherhub", devTok, 0, "names hub"},
		{"bad user name", "d1", devTok, 0, "SASL user name"},
		{"bad password", "d1@sas.myhub", "hunter2", 0, "prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := f.auth.AuthenticateSASLPlain(context.Background(), tt.user, tt.password, now)
			if tt.wantReason != "" {
				if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), tt.wantReason) {
					t.Fatalf("err = %v, want unauthorized containing %q", err, tt.wantReason)
				}
				if sig := sigOf(tt.password); (sig != "" && strings.Contains(err.Error(), sig)) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error %q leaks the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("AuthenticateSASLPlain: %v", err)
			}
			if id.Kind != tt.wantKind {
				t.Fatalf("kind = %v, want %v", id.Kind, tt.wantKind)
			}
		})
	}
}
