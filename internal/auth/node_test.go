package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// nodeDir returns interop/node, failing (not skipping) when node or the npm
// packages are missing: these tests prove compatibility with the SDKs.
func nodeDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "interop", "node"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not on PATH (%v); install Node.js 20+ and run `npm ci` in %s", err, dir)
	}
	for _, pkg := range []string{"azure-iot-device", "azure-iothub", filepath.Join("@azure", "core-amqp")} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg)); err != nil {
			t.Fatalf("%s is not installed (%v); run `npm ci` in %s", pkg, err, dir)
		}
	}
	return dir
}

// TestTokensFromNodeSDKs has the Node SDKs make tokens the way they do in
// production (device SDK, service SDK, Event Hubs core-amqp) and checks that
// the authority accepts them as the right identity.
func TestTokensFromNodeSDKs(t *testing.T) {
	dir := nodeDir(t)
	f := newFixture(t)
	input := map[string]any{
		"host":      host,
		"deviceKey": key1,
		"moduleKey": key3,
		"ownerKey":  DevIoTHubOwnerPrimaryKey,
		"svcKey":    DevServicePrimaryKey,
		"expiry":    future.Unix(),
		"ehAud":     "sb://" + host + "/iothub-ehub-myhub/ConsumerGroups/$default/Partitions/0",
	}
	script := `
const device = require('azure-iot-device');
const iothubSas = require('azure-iothub').SharedAccessSignature;
const { SharedAccessSignature, encodeUriComponentStrict } = require('azure-iot-common');
const { createSasTokenProvider } = require('@azure/core-amqp');
let buf = '';
process.stdin.on('data', d => buf += d);
process.stdin.on('end', async () => {
  const v = JSON.parse(buf);
  const out = {};
  // azure-iot-device: what a device connection string turns into.
  out.device = device.SharedAccessSignature.create(v.host, 'we#ird', v.deviceKey, v.expiry).toString();
  // Module tokens: SharedAccessKeyAuthenticationProvider encodes host/devices/d/modules/m.
  out.module = SharedAccessSignature.create(encodeUriComponentStrict(v.host + '/devices/d1/modules/m1'), undefined, v.moduleKey, v.expiry).toString();
  // azure-iothub: what a service connection string turns into.
  out.owner = iothubSas.create(v.host, 'iothubowner', v.ownerKey, v.expiry).toString();
  // @azure/event-hubs (core-amqp) signs with the key text for its audience.
  const p = createSasTokenProvider({ sharedAccessKeyName: 'service', sharedAccessKey: v.svcKey });
  out.eh = (await p.getToken(v.ehAud)).token;
  process.stdout.write(JSON.stringify(out));
});`
	payload, _ := json.Marshal(input)
	cmd := exec.Command("node", "-e", script)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, stderr.String())
	}
	var toks map[string]string
	if err := json.Unmarshal(out, &toks); err != nil {
		t.Fatalf("node output %q: %v", out, err)
	}
	ctx := context.Background()

	id, err := f.auth.Authenticate(ctx, toks["device"], now)
	if err != nil || id.Kind != KindDevice || id.DeviceID != "we#ird" {
		t.Errorf("device token %s: %+v, %v", toks["device"], id, err)
	}
	id, err = f.auth.Authenticate(ctx, toks["module"], now)
	if err != nil || id.Kind != KindModule || id.ModuleID != "m1" {
		t.Errorf("module token: %+v, %v", id, err)
	}
	id, err = f.auth.Authenticate(ctx, toks["owner"], now)
	if err != nil || id.Kind != KindPolicy || id.PolicyName != "iothubowner" {
		t.Errorf("service token: %+v, %v", id, err)
	}
	// The Event Hubs token expires an hour after the real clock's now.
	id, err = f.auth.AuthenticateEventHubs(ctx, toks["eh"], time.Now())
	if err != nil || id.PolicyName != "service" || !id.Covers("/iothub-ehub-myhub/ConsumerGroups/$default/Partitions/0") {
		t.Errorf("Event Hubs token %s: %+v, %v", toks["eh"], id, err)
	}
	// And the Event Hubs token is not an IoT Hub token: wrong key convention.
	if _, err := f.auth.Authenticate(ctx, toks["eh"], time.Now()); err == nil {
		t.Error("Event Hubs token accepted by Authenticate")
	}
}
