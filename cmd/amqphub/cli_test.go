package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/server"
)

func runCLI(t *testing.T, s *server.Server, args ...string) (string, error) {
	t.Helper()
	hubArgs := []string{
		"--hub", "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=" + auth.DevIoTHubOwnerPrimaryKey,
		"--ca", s.CAFile,
		"--rest-url", "https://" + s.HTTPSAddr,
	}
	var out bytes.Buffer
	var err error
	switch args[0] {
	case "device":
		err = deviceCmd(append(append([]string{args[1]}, hubArgs...), args[2:]...), &out)
	case "token":
		err = tokenCmd(append(hubArgs, args[1:]...), &out)
	}
	return out.String(), err
}

func TestDeviceCommands(t *testing.T) {
	s := server.StartTest(t, nil)
	out, err := runCLI(t, s, "device", "create", "cli-dev")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !strings.Contains(out, "HostName=localhost;DeviceId=cli-dev;SharedAccessKey=") {
		t.Fatalf("create printed no connection string:\n%s", out)
	}
	if _, err := runCLI(t, s, "device", "create", "cli-dev"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second create: %v, want a 409 conflict", err)
	}
	out, err = runCLI(t, s, "device", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ds []client.Device
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	found := false
	for _, d := range ds {
		found = found || d.DeviceID == "cli-dev"
	}
	if !found {
		t.Fatalf("list lacks cli-dev: %s", out)
	}
	out, err = runCLI(t, s, "device", "show", "cli-dev")
	if err != nil || !strings.Contains(out, "status:        enabled") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	cs, err := runCLI(t, s, "device", "connection-string", "cli-dev")
	if err != nil {
		t.Fatal(err)
	}
	dc, err := client.ParseDeviceConnectionString(strings.TrimSpace(cs))
	if err != nil {
		t.Fatalf("connection-string output %q: %v", cs, err)
	}
	// The token command's device token authenticates as that device.
	tok, err := runCLI(t, s, "token", "--device", "cli-dev", "--ttl", "10m")
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Authority.Authenticate(context.Background(), strings.TrimSpace(tok), time.Now())
	if err != nil || id.DeviceID != "cli-dev" {
		t.Fatalf("token from the CLI: %v %+v", err, id)
	}
	tok2, _ := dc.Token(time.Minute)
	if _, err := s.Authority.Authenticate(context.Background(), tok2, time.Now()); err != nil {
		t.Fatalf("token from the printed connection string: %v", err)
	}
	ptok, err := runCLI(t, s, "token")
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := s.Authority.Authenticate(context.Background(), strings.TrimSpace(ptok), time.Now()); err != nil || pid.PolicyName != "iothubowner" {
		t.Fatalf("policy token: %v %+v", err, pid)
	}
	if _, err := runCLI(t, s, "device", "delete", "cli-dev"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, s, "device", "show", "cli-dev"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("show after delete: %v", err)
	}
}

func TestCLIWrongKeyExplains(t *testing.T) {
	s := server.StartTest(t, nil)
	var out bytes.Buffer
	err := deviceCmd([]string{"list", "--hub", "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=" + auth.DevServicePrimaryKey,
		"--ca", s.CAFile, "--rest-url", "https://" + s.HTTPSAddr}, &out)
	if err == nil || !strings.Contains(err.Error(), "refused the credentials") {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestLoadOptionsPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := dir + "/hub.yaml"
	if err := writeFile(cfg, "hubName: fromfile\nhostName: file.example\npartitions: 8\ndevices:\n  - id: seeded\n    primaryKey: YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=\n"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AMQPHUB_HOST_NAME", "env.example")
	o, _, err := loadOptions([]string{"--config", cfg, "--partitions", "2"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.HubName != "fromfile" || o.HostName != "env.example" || o.Partitions != 2 || len(o.Devices) != 1 || o.Devices[0].ID != "seeded" {
		t.Fatalf("options %+v", o)
	}
	if err := writeFile(cfg, "hubNme: typo\n"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOptions([]string{"--config", cfg}, &bytes.Buffer{}); err == nil {
		t.Fatal("a misspelled config key was accepted")
	}
	o, _, err = loadOptions(nil, &bytes.Buffer{})
	if err != nil || len(o.Devices) != 2 {
		t.Fatalf("defaults: %v %+v", err, o.Devices)
	}
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }

// TestClusterConfigExample keeps deploy/cluster/amqphub.yaml loadable, and
// checks the cluster flags override it.
func TestClusterConfigExample(t *testing.T) {
	o, _, err := loadOptions([]string{"--config", "../../deploy/cluster/amqphub.yaml", "--node-id", "n7", "--replicas", "1"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.Cluster
	if !c.Enabled() || c.URLs != "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222" || c.NodeID != "n7" || c.Replicas != 1 || c.Prefix != "AMQPHUB" {
		t.Fatalf("cluster options %+v", c)
	}
	if o.HostName != "iothub.example.com" || len(o.HostAliases) != 2 || o.Retention.Hours() != 24 || len(o.Policies) != 1 {
		t.Fatalf("options %+v", o)
	}
	t.Setenv("AMQPHUB_CLUSTER", "nats://env:4222")
	t.Setenv("AMQPHUB_HOST_ALIASES", "a.example, b.example")
	o, _, err = loadOptions(nil, &bytes.Buffer{})
	if err != nil || o.Cluster.URLs != "nats://env:4222" || len(o.HostAliases) != 2 || o.HostAliases[1] != "b.example" {
		t.Fatalf("from the environment: %v %+v", err, o)
	}
}
