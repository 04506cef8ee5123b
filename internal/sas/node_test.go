package sas

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// nodeDir returns interop/node, failing the test (not skipping) when node or
// the npm packages are missing, because this test is the proof of byte
// compatibility with the Node SDK.
func nodeDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "interop", "node"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatalf("node is not on PATH (%v); install Node.js 20+ and run `npm ci` in %s", err, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "azure-iot-common")); err != nil {
		t.Fatalf("azure-iot-common is not installed (%v); run `npm ci` in %s", err, dir)
	}
	return dir
}

// TestSignMatchesNodeSDK signs the same inputs with azure-iot-common (the
// code the Node device and service SDKs use) and with Sign, and requires the
// exact same token text.
func TestSignMatchesNodeSDK(t *testing.T) {
	dir := nodeDir(t)
	type vector struct {
		Resource string `json:"resource"`
		Encode   bool   `json:"encode"` // device SDK encodes sr; service SDK passes the host raw
		KeyName  string `json:"keyName"`
		Key      string `json:"key"`
		Expiry   int64  `json:"expiry"`
		Token    string `json:"token"`
	}
	in := []vector{
		{Resource: "myhub.azure-devices.net/devices/device1", Encode: true, Key: testKey, Expiry: 1700000000},
		{Resource: "myhub.azure-devices.net/devices/dev!ce'(x)*+=$@,:#%/modules/$edgeAgent", Encode: true, Key: testKey, Expiry: 1712345678},
		{Resource: "myhub.azure-devices.net", Encode: false, KeyName: "iothubowner", Key: "YW1xcGh1Yi1kZXYtaW90aHVib3duZXItcHJpbWFyeQ==", Expiry: 1700003600},
		{Resource: "127.0.0.1", Encode: false, KeyName: "registry Read/Write", Key: testKey, Expiry: 4102444800},
		{Resource: "myhub.azure-devices.net/devices/d1", Encode: true, KeyName: "device", Key: testKey, Expiry: 1},
	}
	script := `
const { SharedAccessSignature, encodeUriComponentStrict } = require('azure-iot-common');
let buf = '';
process.stdin.on('data', d => buf += d);
process.stdin.on('end', () => {
  const vs = JSON.parse(buf);
  for (const v of vs) {
    const sr = v.encode ? encodeUriComponentStrict(v.resource) : v.resource;
    v.token = SharedAccessSignature.create(sr, v.keyName || undefined, v.key, v.expiry).toString();
  }
  process.stdout.write(JSON.stringify(vs));
});`
	payload, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", "-e", script)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, stderr.String())
	}
	var got []vector
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode node output %q: %v", out, err)
	}
	if len(got) != len(in) {
		t.Fatalf("node returned %d vectors, want %d", len(got), len(in))
	}
	for _, v := range got {
		key := mustDecode(t, v.Key)
		exp := time.Unix(v.Expiry, 0)
		var mine string
		if v.Encode {
			mine = Sign(v.Resource, key, v.KeyName, exp)
		} else {
			mine = SignEncoded(v.Resource, key, v.KeyName, exp)
		}
		if mine != v.Token {
			t.Errorf("resource %q:\n go   %s\n node %s", v.Resource, mine, v.Token)
			continue
		}
		p, err := Parse(v.Token)
		if err != nil {
			t.Errorf("Parse(node token): %v", err)
			continue
		}
		if err := p.Verify(key); err != nil {
			t.Errorf("node token for %q does not verify: %v", v.Resource, err)
		}
		if v.Encode && p.Resource != v.Resource {
			t.Errorf("decoded resource %q, want %q", p.Resource, v.Resource)
		}
	}
}
