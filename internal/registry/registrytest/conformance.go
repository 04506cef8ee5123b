// Package registrytest is the conformance suite every registry.Store
// implementation must pass. A backend's test calls Run with a constructor
// that returns a fresh, empty store.
package registrytest

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"amqphub/internal/registry"
)

// NewStore returns an empty store; the suite closes it. Use t.Cleanup for
// anything else (temporary directories are already handled by t.TempDir).
type NewStore func(t *testing.T) registry.Store

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(*testing.T, registry.Store)
	}{
		{"CreateGetDevice", testCreateGetDevice},
		{"CreateDeviceGeneratesKeysAndIgnoresServiceFields", testCreateGenerates},
		{"CreateDeviceKeepsGivenKeys", testCreateKeepsKeys},
		{"CreateDuplicateDevice", testCreateDuplicate},
		{"InvalidDevices", testInvalidDevices},
		{"GetMissingDevice", testGetMissing},
		{"ReplaceDeviceETag", testReplaceETag},
		{"ReplaceMissingDevice", testReplaceMissing},
		{"DeleteDevice", testDeleteDevice},
		{"DeleteDeviceCascadesModules", testDeleteCascades},
		{"RecreatedDeviceHasNewGeneration", testRecreateGeneration},
		{"ListDevicesPaging", testListDevices},
		{"CountDevices", testCountDevices},
		{"RegenerateDeviceKey", testRegenerateDeviceKey},
		{"Modules", testModules},
		{"ModuleErrors", testModuleErrors},
		{"ReturnedValuesAreCopies", testCopies},
		{"ConcurrentConditionalReplace", testConcurrentReplace},
		{"ConcurrentReadsAndWrites", testConcurrentReadWrite},
		{"Close", testClose},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			defer s.Close()
			tt.fn(t, s)
		})
	}
}

// Key1 and Key2 are valid 32-byte SAS keys for tests.
const (
	Key1 = "a2V5MWtleTFrZXkxa2V5MWtleTFrZXkxa2V5MWtleTE="
	Key2 = "a2V5MmtleTJrZXkya2V5MmtleTJrZXkya2V5MmtleTI="
)

func sasDevice(id string) registry.Device {
	return registry.Device{
		DeviceID: id,
		Authentication: registry.Authentication{
			Type:         registry.AuthSAS,
			SymmetricKey: registry.SymmetricKey{PrimaryKey: Key1, SecondaryKey: Key2},
		},
	}
}

func mustCreate(t *testing.T, s registry.Store, d registry.Device) registry.Device {
	t.Helper()
	got, err := s.CreateDevice(context.Background(), d)
	if err != nil {
		t.Fatalf("CreateDevice(%q): %v", d.DeviceID, err)
	}
	return got
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}

func testCreateGetDevice(t *testing.T, s registry.Store) {
	ctx := context.Background()
	in := sasDevice("dev-1")
	in.StatusReason = "provisioned"
	in.Capabilities.IoTEdge = true
	created := mustCreate(t, s, in)
	if created.DeviceID != "dev-1" || created.Status != registry.StatusEnabled ||
		created.StatusReason != "provisioned" || !created.Capabilities.IoTEdge ||
		created.Authentication.Type != registry.AuthSAS ||
		created.Authentication.SymmetricKey != in.Authentication.SymmetricKey ||
		created.ConnectionState != registry.Disconnected {
		t.Fatalf("created = %+v", created)
	}
	if created.ETag == "" || created.GenerationID == "" {
		t.Fatalf("etag %q / generationId %q not set", created.ETag, created.GenerationID)
	}
	for _, c := range created.GenerationID {
		if c < '0' || c > '9' {
			t.Fatalf("generationId %q is not decimal digits", created.GenerationID)
		}
	}
	got, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	if fmt.Sprint(got) != fmt.Sprint(created) {
		t.Fatalf("GetDevice = %+v\nwant %+v", got, created)
	}
	// Ids are case-sensitive.
	_, err = s.GetDevice(ctx, "DEV-1")
	wantErr(t, "GetDevice(other case)", err, registry.ErrDeviceNotFound)
}

func testCreateGenerates(t *testing.T, s registry.Store) {
	in := registry.Device{
		DeviceID:                  "gen",
		GenerationID:              "1",
		ETag:                      "client-etag",
		ConnectionState:           registry.Connected,
		CloudToDeviceMessageCount: 7,
		Status:                    "Disabled",
	}
	got := mustCreate(t, s, in)
	if got.GenerationID == "1" || got.ETag == "client-etag" || got.ConnectionState != registry.Disconnected || got.CloudToDeviceMessageCount != 0 {
		t.Fatalf("service fields taken from input: %+v", got)
	}
	if got.Status != registry.StatusDisabled {
		t.Fatalf("status = %q, want disabled", got.Status)
	}
	if got.Authentication.Type != registry.AuthSAS {
		t.Fatalf("auth type = %q", got.Authentication.Type)
	}
	k := got.Authentication.SymmetricKey
	for _, key := range []string{k.PrimaryKey, k.SecondaryKey} {
		b, err := base64.StdEncoding.DecodeString(key)
		if err != nil || len(b) != 32 {
			t.Fatalf("generated key %q: %d bytes, %v", key, len(b), err)
		}
	}
	if k.PrimaryKey == k.SecondaryKey {
		t.Fatal("primary and secondary generated keys are equal")
	}
	other := mustCreate(t, s, registry.Device{DeviceID: "gen2"})
	if other.Authentication.SymmetricKey.PrimaryKey == k.PrimaryKey {
		t.Fatal("two devices got the same generated key")
	}
}

func testCreateKeepsKeys(t *testing.T, s registry.Store) {
	in := registry.Device{DeviceID: "half", Authentication: registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: Key1}}}
	got := mustCreate(t, s, in)
	if got.Authentication.SymmetricKey.PrimaryKey != Key1 || got.Authentication.SymmetricKey.SecondaryKey == "" {
		t.Fatalf("keys = %+v", got.Authentication.SymmetricKey)
	}
}

func testCreateDuplicate(t *testing.T, s registry.Store) {
	first := mustCreate(t, s, sasDevice("dup"))
	_, err := s.CreateDevice(context.Background(), sasDevice("dup"))
	wantErr(t, "second CreateDevice", err, registry.ErrDeviceAlreadyExists)
	got, err := s.GetDevice(context.Background(), "dup")
	if err != nil || got.ETag != first.ETag {
		t.Fatalf("failed create changed the device: %+v, %v", got, err)
	}
}

func testInvalidDevices(t *testing.T, s registry.Store) {
	long := strings.Repeat("a", registry.MaxIDLength+1)
	tests := []struct {
		name string
		d    registry.Device
	}{
		{"empty id", registry.Device{}},
		{"too long id", registry.Device{DeviceID: long}},
		{"slash", registry.Device{DeviceID: "a/b"}},
		{"space", registry.Device{DeviceID: "a b"}},
		{"non-ascii", registry.Device{DeviceID: "dévice"}},
		{"nul", registry.Device{DeviceID: "a\x00b"}},
		{"bad status", registry.Device{DeviceID: "x", Status: "paused"}},
		{"bad auth type", registry.Device{DeviceID: "x", Authentication: registry.Authentication{Type: "password"}}},
		{"key not base64", registry.Device{DeviceID: "x", Authentication: registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: "not base64!"}}}},
		{"key too short", registry.Device{DeviceID: "x", Authentication: registry.Authentication{SymmetricKey: registry.SymmetricKey{PrimaryKey: "c2hvcnQ="}}}},
		{"keys with selfSigned", registry.Device{DeviceID: "x", Authentication: registry.Authentication{Type: registry.AuthSelfSigned, SymmetricKey: registry.SymmetricKey{PrimaryKey: Key1}, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "AB"}}}},
		{"selfSigned without thumbprint", registry.Device{DeviceID: "x", Authentication: registry.Authentication{Type: registry.AuthSelfSigned}}},
		{"thumbprint not hex", registry.Device{DeviceID: "x", Authentication: registry.Authentication{Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "xyz"}}}},
		{"long status reason", registry.Device{DeviceID: "x", StatusReason: long}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateDevice(context.Background(), tt.d)
			wantErr(t, "CreateDevice", err, registry.ErrInvalidArgument)
			if strings.Contains(err.Error(), "not base64!") {
				t.Fatalf("error %q echoes the key", err)
			}
		})
	}
	// Every allowed special character is accepted.
	ok := mustCreate(t, s, registry.Device{DeviceID: "a-.+%_#*?!(),:=@$'Z9"})
	if _, err := s.GetDevice(context.Background(), ok.DeviceID); err != nil {
		t.Fatalf("GetDevice(special chars): %v", err)
	}
	self := mustCreate(t, s, registry.Device{DeviceID: "x509dev", Authentication: registry.Authentication{Type: "selfsigned", X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "ABCDEF0123"}}})
	if self.Authentication.Type != registry.AuthSelfSigned || self.Authentication.SymmetricKey.PrimaryKey != "" {
		t.Fatalf("selfSigned device = %+v", self.Authentication)
	}
}

func testGetMissing(t *testing.T, s registry.Store) {
	for _, id := range []string{"nope", "", "a/b", strings.Repeat("z", 300)} {
		_, err := s.GetDevice(context.Background(), id)
		wantErr(t, fmt.Sprintf("GetDevice(%q)", id), err, registry.ErrDeviceNotFound)
	}
}

func testReplaceETag(t *testing.T, s registry.Store) {
	ctx := context.Background()
	d := mustCreate(t, s, sasDevice("r"))

	upd := d
	upd.Status = registry.StatusDisabled
	upd.StatusReason = "maintenance"
	_, err := s.ReplaceDevice(ctx, upd, "stale")
	wantErr(t, "ReplaceDevice(stale etag)", err, registry.ErrPreconditionFailed)

	got, err := s.ReplaceDevice(ctx, upd, `"`+d.ETag+`"`)
	if err != nil {
		t.Fatalf("ReplaceDevice(quoted current etag): %v", err)
	}
	if got.ETag == d.ETag || got.GenerationID != d.GenerationID || got.Status != registry.StatusDisabled || got.StatusReason != "maintenance" {
		t.Fatalf("replaced = %+v", got)
	}
	if got.StatusUpdatedTime.IsZero() {
		t.Fatal("statusUpdatedTime not set when status changed")
	}
	// The old etag is now stale, bare or quoted.
	_, err = s.ReplaceDevice(ctx, upd, d.ETag)
	wantErr(t, "ReplaceDevice(old etag)", err, registry.ErrPreconditionFailed)

	for _, ifMatch := range []string{"", "*", `"*"`, "current", "W/current"} {
		upd.StatusReason = "again " + ifMatch
		switch ifMatch {
		case "current":
			ifMatch = got.ETag
		case "W/current":
			ifMatch = `W/"` + got.ETag + `"`
		}
		got, err = s.ReplaceDevice(ctx, upd, ifMatch)
		if err != nil {
			t.Fatalf("ReplaceDevice(If-Match %q): %v", ifMatch, err)
		}
	}
	back, err := s.GetDevice(ctx, "r")
	if err != nil || back.ETag != got.ETag || back.StatusReason != got.StatusReason {
		t.Fatalf("GetDevice after replace = %+v, %v", back, err)
	}

	// Omitted keys are kept, given keys replace.
	noKeys := back
	noKeys.Authentication = registry.Authentication{}
	kept, err := s.ReplaceDevice(ctx, noKeys, "*")
	if err != nil || kept.Authentication.SymmetricKey != d.Authentication.SymmetricKey || kept.Authentication.Type != registry.AuthSAS {
		t.Fatalf("ReplaceDevice without keys = %+v, %v; want keys kept", kept.Authentication, err)
	}
	swapped := back
	swapped.Authentication.SymmetricKey = registry.SymmetricKey{PrimaryKey: Key2, SecondaryKey: ""}
	half, err := s.ReplaceDevice(ctx, swapped, "*")
	if err != nil || half.Authentication.SymmetricKey.PrimaryKey != Key2 || half.Authentication.SymmetricKey.SecondaryKey != Key2 {
		t.Fatalf("ReplaceDevice with one key = %+v, %v", half.Authentication.SymmetricKey, err)
	}

	bad := back
	bad.Status = "sleeping"
	_, err = s.ReplaceDevice(ctx, bad, "*")
	wantErr(t, "ReplaceDevice(bad status)", err, registry.ErrInvalidArgument)
}

func testReplaceMissing(t *testing.T, s registry.Store) {
	_, err := s.ReplaceDevice(context.Background(), sasDevice("ghost"), "*")
	wantErr(t, "ReplaceDevice(missing)", err, registry.ErrDeviceNotFound)
	_, err = s.GetDevice(context.Background(), "ghost")
	wantErr(t, "GetDevice after failed replace", err, registry.ErrDeviceNotFound)
}

func testDeleteDevice(t *testing.T, s registry.Store) {
	ctx := context.Background()
	d := mustCreate(t, s, sasDevice("del"))
	wantErr(t, "DeleteDevice(stale)", s.DeleteDevice(ctx, "del", "stale"), registry.ErrPreconditionFailed)
	if _, err := s.GetDevice(ctx, "del"); err != nil {
		t.Fatalf("device gone after failed delete: %v", err)
	}
	if err := s.DeleteDevice(ctx, "del", `"`+d.ETag+`"`); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	_, err := s.GetDevice(ctx, "del")
	wantErr(t, "GetDevice after delete", err, registry.ErrDeviceNotFound)
	wantErr(t, "DeleteDevice again", s.DeleteDevice(ctx, "del", "*"), registry.ErrDeviceNotFound)

	mustCreate(t, s, sasDevice("del2"))
	if err := s.DeleteDevice(ctx, "del2", "*"); err != nil {
		t.Fatalf("DeleteDevice(*): %v", err)
	}
}

func testDeleteCascades(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, sasDevice("parent"))
	mustCreate(t, s, sasDevice("parent2")) // shares a prefix; its modules must survive
	for _, dev := range []string{"parent", "parent2"} {
		for _, m := range []string{"m1", "m2"} {
			if _, err := s.CreateModule(ctx, registry.Module{DeviceID: dev, ModuleID: m}); err != nil {
				t.Fatalf("CreateModule(%s/%s): %v", dev, m, err)
			}
		}
	}
	if err := s.DeleteDevice(ctx, "parent", ""); err != nil {
		t.Fatalf("DeleteDevice: %v", err)
	}
	_, err := s.GetModule(ctx, "parent", "m1")
	wantErr(t, "GetModule after device delete", err, registry.ErrModuleNotFound)
	mustCreate(t, s, sasDevice("parent"))
	ms, err := s.ListModules(ctx, "parent")
	if err != nil || len(ms) != 0 {
		t.Fatalf("re-created device has modules %+v, %v", ms, err)
	}
	ms, err = s.ListModules(ctx, "parent2")
	if err != nil || len(ms) != 2 {
		t.Fatalf("sibling device modules = %+v, %v", ms, err)
	}
}

func testRecreateGeneration(t *testing.T, s registry.Store) {
	ctx := context.Background()
	a := mustCreate(t, s, sasDevice("again"))
	if err := s.DeleteDevice(ctx, "again", ""); err != nil {
		t.Fatal(err)
	}
	b := mustCreate(t, s, sasDevice("again"))
	if a.GenerationID == b.GenerationID {
		t.Fatalf("re-created device kept generationId %q", a.GenerationID)
	}
}

func testListDevices(t *testing.T, s registry.Store) {
	ctx := context.Background()
	all, err := s.ListDevices(ctx, "", 0)
	if err != nil || len(all) != 0 {
		t.Fatalf("empty list = %v, %v", all, err)
	}
	ids := []string{"c", "a", "b", "e", "d"}
	for _, id := range ids {
		mustCreate(t, s, sasDevice(id))
	}
	// Modules must not show up as devices.
	if _, err := s.CreateModule(ctx, registry.Module{DeviceID: "a", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		after string
		limit int
		want  string
	}{
		{"", 0, "abcde"},
		{"", 2, "ab"},
		{"b", 2, "cd"},
		{"d", 10, "e"},
		{"e", 10, ""},
		{"bb", 0, "cde"},
	}
	for _, tt := range tests {
		got, err := s.ListDevices(ctx, tt.after, tt.limit)
		if err != nil {
			t.Fatalf("ListDevices(%q, %d): %v", tt.after, tt.limit, err)
		}
		var b strings.Builder
		for _, d := range got {
			b.WriteString(d.DeviceID)
			if d.Authentication.SymmetricKey.PrimaryKey != Key1 {
				t.Fatalf("listed device %q lacks its keys", d.DeviceID)
			}
		}
		if b.String() != tt.want {
			t.Errorf("ListDevices(%q, %d) = %q, want %q", tt.after, tt.limit, b.String(), tt.want)
		}
	}
}

func testCountDevices(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, sasDevice("on1"))
	mustCreate(t, s, sasDevice("on2"))
	off := sasDevice("off")
	off.Status = registry.StatusDisabled
	mustCreate(t, s, off)
	if _, err := s.CreateModule(ctx, registry.Module{DeviceID: "on1", ModuleID: "m"}); err != nil {
		t.Fatal(err)
	}
	total, enabled, err := s.CountDevices(ctx)
	if err != nil || total != 3 || enabled != 2 {
		t.Fatalf("CountDevices = %d, %d, %v; want 3, 2", total, enabled, err)
	}
}

func testRegenerateDeviceKey(t *testing.T, s registry.Store) {
	ctx := context.Background()
	d := mustCreate(t, s, sasDevice("rk"))
	k := d.Authentication.SymmetricKey

	_, err := s.RegenerateDeviceKey(ctx, "rk", registry.KeyPrimary, "stale")
	wantErr(t, "RegenerateDeviceKey(stale)", err, registry.ErrPreconditionFailed)

	p, err := s.RegenerateDeviceKey(ctx, "rk", registry.KeyPrimary, d.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if p.Authentication.SymmetricKey.PrimaryKey == k.PrimaryKey || p.Authentication.SymmetricKey.SecondaryKey != k.SecondaryKey || p.ETag == d.ETag {
		t.Fatalf("after primary regeneration: %+v", p)
	}
	sec, err := s.RegenerateDeviceKey(ctx, "rk", registry.KeySecondary, "")
	if err != nil {
		t.Fatal(err)
	}
	if sec.Authentication.SymmetricKey.SecondaryKey == k.SecondaryKey || sec.Authentication.SymmetricKey.PrimaryKey != p.Authentication.SymmetricKey.PrimaryKey {
		t.Fatalf("after secondary regeneration: %+v", sec)
	}
	sw, err := s.RegenerateDeviceKey(ctx, "rk", registry.KeySwap, "*")
	if err != nil {
		t.Fatal(err)
	}
	if sw.Authentication.SymmetricKey.PrimaryKey != sec.Authentication.SymmetricKey.SecondaryKey ||
		sw.Authentication.SymmetricKey.SecondaryKey != sec.Authentication.SymmetricKey.PrimaryKey {
		t.Fatalf("swap: %+v from %+v", sw.Authentication.SymmetricKey, sec.Authentication.SymmetricKey)
	}
	got, err := s.GetDevice(ctx, "rk")
	if err != nil || got.Authentication.SymmetricKey != sw.Authentication.SymmetricKey {
		t.Fatalf("GetDevice after regeneration = %+v, %v", got.Authentication, err)
	}
	_, err = s.RegenerateDeviceKey(ctx, "missing", registry.KeyPrimary, "")
	wantErr(t, "RegenerateDeviceKey(missing)", err, registry.ErrDeviceNotFound)
	_, err = s.RegenerateDeviceKey(ctx, "rk", registry.KeyKind(99), "")
	wantErr(t, "RegenerateDeviceKey(bad kind)", err, registry.ErrInvalidArgument)
	mustCreate(t, s, registry.Device{DeviceID: "x509", Authentication: registry.Authentication{Type: registry.AuthSelfSigned, X509Thumbprint: registry.X509Thumbprint{PrimaryThumbprint: "AA"}}})
	_, err = s.RegenerateDeviceKey(ctx, "x509", registry.KeyPrimary, "")
	wantErr(t, "RegenerateDeviceKey(x509 device)", err, registry.ErrInvalidArgument)
}

func testModules(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, sasDevice("host"))
	m, err := s.CreateModule(ctx, registry.Module{DeviceID: "host", ModuleID: "$edgeAgent", ManagedBy: "IotEdge"})
	if err != nil {
		t.Fatalf("CreateModule: %v", err)
	}
	if m.ETag == "" || m.GenerationID == "" || m.Authentication.Type != registry.AuthSAS || m.Authentication.SymmetricKey.PrimaryKey == "" || m.ManagedBy != "IotEdge" || m.ConnectionState != registry.Disconnected {
		t.Fatalf("created module = %+v", m)
	}
	_, err = s.CreateModule(ctx, registry.Module{DeviceID: "host", ModuleID: "$edgeAgent"})
	wantErr(t, "CreateModule(duplicate)", err, registry.ErrModuleAlreadyExists)

	got, err := s.GetModule(ctx, "host", "$edgeAgent")
	if err != nil || got != m {
		t.Fatalf("GetModule = %+v, %v; want %+v", got, err, m)
	}
	if _, err := s.CreateModule(ctx, registry.Module{DeviceID: "host", ModuleID: "alpha"}); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListModules(ctx, "host")
	if err != nil || len(list) != 2 || list[0].ModuleID != "$edgeAgent" || list[1].ModuleID != "alpha" {
		t.Fatalf("ListModules = %+v, %v", list, err)
	}

	upd := m
	upd.ManagedBy = "someone"
	_, err = s.ReplaceModule(ctx, upd, "stale")
	wantErr(t, "ReplaceModule(stale)", err, registry.ErrPreconditionFailed)
	r, err := s.ReplaceModule(ctx, upd, m.ETag)
	if err != nil || r.ManagedBy != "someone" || r.ETag == m.ETag || r.GenerationID != m.GenerationID {
		t.Fatalf("ReplaceModule = %+v, %v", r, err)
	}

	rk, err := s.RegenerateModuleKey(ctx, "host", "$edgeAgent", registry.KeySwap, r.ETag)
	if err != nil || rk.Authentication.SymmetricKey.PrimaryKey != r.Authentication.SymmetricKey.SecondaryKey {
		t.Fatalf("RegenerateModuleKey(swap) = %+v, %v", rk, err)
	}

	wantErr(t, "DeleteModule(stale)", s.DeleteModule(ctx, "host", "$edgeAgent", m.ETag), registry.ErrPreconditionFailed)
	if err := s.DeleteModule(ctx, "host", "$edgeAgent", rk.ETag); err != nil {
		t.Fatalf("DeleteModule: %v", err)
	}
	_, err = s.GetModule(ctx, "host", "$edgeAgent")
	wantErr(t, "GetModule after delete", err, registry.ErrModuleNotFound)
	list, err = s.ListModules(ctx, "host")
	if err != nil || len(list) != 1 {
		t.Fatalf("ListModules after delete = %+v, %v", list, err)
	}
	if _, err := s.GetDevice(ctx, "host"); err != nil {
		t.Fatalf("deleting a module removed its device: %v", err)
	}
}

func testModuleErrors(t *testing.T, s registry.Store) {
	ctx := context.Background()
	_, err := s.CreateModule(ctx, registry.Module{DeviceID: "none", ModuleID: "m"})
	wantErr(t, "CreateModule(no device)", err, registry.ErrDeviceNotFound)
	_, err = s.ListModules(ctx, "none")
	wantErr(t, "ListModules(no device)", err, registry.ErrDeviceNotFound)
	mustCreate(t, s, sasDevice("d"))
	_, err = s.GetModule(ctx, "d", "none")
	wantErr(t, "GetModule(missing)", err, registry.ErrModuleNotFound)
	_, err = s.ReplaceModule(ctx, registry.Module{DeviceID: "d", ModuleID: "none"}, "*")
	wantErr(t, "ReplaceModule(missing)", err, registry.ErrModuleNotFound)
	wantErr(t, "DeleteModule(missing)", s.DeleteModule(ctx, "d", "none", ""), registry.ErrModuleNotFound)
	_, err = s.RegenerateModuleKey(ctx, "d", "none", registry.KeyPrimary, "")
	wantErr(t, "RegenerateModuleKey(missing)", err, registry.ErrModuleNotFound)
	_, err = s.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: "bad/id"})
	wantErr(t, "CreateModule(bad id)", err, registry.ErrInvalidArgument)
	_, err = s.CreateModule(ctx, registry.Module{DeviceID: "d", ModuleID: ""})
	wantErr(t, "CreateModule(empty id)", err, registry.ErrInvalidArgument)
	_, err = s.GetModule(ctx, "d", "bad/id")
	wantErr(t, "GetModule(bad id)", err, registry.ErrModuleNotFound)
}

func testCopies(t *testing.T, s registry.Store) {
	ctx := context.Background()
	in := sasDevice("copy")
	in.ParentScopes = []string{"scope-a"}
	created := mustCreate(t, s, in)
	in.ParentScopes[0] = "mutated-input"
	created.ParentScopes[0] = "mutated-result"
	got, err := s.GetDevice(ctx, "copy")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ParentScopes) != 1 || got.ParentScopes[0] != "scope-a" {
		t.Fatalf("stored parentScopes changed through caller's slice: %v", got.ParentScopes)
	}
	got.ParentScopes[0] = "mutated-get"
	again, err := s.GetDevice(ctx, "copy")
	if err != nil || again.ParentScopes[0] != "scope-a" {
		t.Fatalf("stored parentScopes changed through GetDevice result: %v, %v", again.ParentScopes, err)
	}
}

// testConcurrentConditionalReplace races writers that all hold the same
// etag: exactly one may win.
func testConcurrentReplace(t *testing.T, s registry.Store) {
	ctx := context.Background()
	d := mustCreate(t, s, sasDevice("race"))
	const writers = 8
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := d
			u.StatusReason = fmt.Sprintf("writer %d", i)
			_, errs[i] = s.ReplaceDevice(ctx, u, d.ETag)
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, registry.ErrPreconditionFailed):
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d writers won with the same etag, want 1", wins)
	}
}

// testConcurrentReadWrite checks that readers never observe a value older
// than the last completed write (the read cache must not go stale).
func testConcurrentReadWrite(t *testing.T, s registry.Store) {
	ctx := context.Background()
	const devices = 4
	const rounds = 50
	for i := range devices {
		mustCreate(t, s, sasDevice(fmt.Sprintf("rw%d", i)))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	readErr := make(chan error, 1)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range devices {
					if _, err := s.GetDevice(ctx, fmt.Sprintf("rw%d", i)); err != nil {
						select {
						case readErr <- err:
						default:
						}
						return
					}
				}
			}
		}()
	}
	for n := 1; n <= rounds; n++ {
		for i := range devices {
			id := fmt.Sprintf("rw%d", i)
			u := sasDevice(id)
			u.StatusReason = fmt.Sprint(n)
			if _, err := s.ReplaceDevice(ctx, u, ""); err != nil {
				t.Fatal(err)
			}
			got, err := s.GetDevice(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if got.StatusReason != fmt.Sprint(n) {
				t.Fatalf("read %q after writing %d", got.StatusReason, n)
			}
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-readErr:
		t.Fatalf("concurrent reader: %v", err)
	default:
	}
}

func testClose(t *testing.T, s registry.Store) {
	ctx := context.Background()
	mustCreate(t, s, sasDevice("c"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := s.GetDevice(ctx, "c")
	wantErr(t, "GetDevice after Close", err, registry.ErrClosed)
	_, err = s.CreateDevice(ctx, sasDevice("d"))
	wantErr(t, "CreateDevice after Close", err, registry.ErrClosed)
	_, err = s.ListDevices(ctx, "", 0)
	wantErr(t, "ListDevices after Close", err, registry.ErrClosed)
	_, err = s.GetModule(ctx, "c", "m")
	wantErr(t, "GetModule after Close", err, registry.ErrClosed)
}
