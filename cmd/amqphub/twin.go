package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"amqphub/client"
)

// twinCmd shows and updates twins: tags and desired properties through
// the service REST API, reported properties as the device over AMQP.
func twinCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "show" && args[0] != "update") {
		return errors.New("usage: amqphub twin show <device-id> | amqphub twin update <device-id> [--desired JSON] [--tags JSON] [--reported JSON]")
	}
	sub := args[0]
	fs := flag.NewFlagSet("twin "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "give up after this long (default 30s)")
	cf.setLog(stderr)
	var (
		module   = fs.String("module", "", "the twin of this module of the device")
		desired  = fs.String("desired", "", `update: desired properties to merge, as JSON (e.g. '{"interval":5}'; null removes)`)
		tags     = fs.String("tags", "", "update: tags to merge, as JSON")
		reported = fs.String("reported", "", "update: reported properties to merge, as JSON, sent as the device (key from the registry, or --device-connection-string)")
		devCS    = fs.String("device-connection-string", "", "update --reported: the device's connection string")
		etag     = fs.String("etag", "", "update: only if the twin still has this etag")
	)
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: amqphub twin %s <device-id> [flags]", sub)
	}
	dev := pos[0]
	if cf.timeout == 0 {
		cf.timeout = 30 * time.Second
	}
	ctx, cancel := cf.context()
	defer cancel()
	svc, err := cf.service()
	if err != nil {
		return err
	}
	defer svc.Close()
	if sub == "update" {
		if *desired == "" && *tags == "" && *reported == "" {
			return errors.New("twin update needs --desired, --tags or --reported")
		}
		if *reported != "" {
			patch, err := jsonObject("--reported", *reported)
			if err != nil {
				return err
			}
			df := deviceFlags{device: dev, module: *module, connStr: *devCS}
			d, err := df.client(ctx, &cf)
			if err != nil {
				return err
			}
			defer d.Close()
			if _, err := d.UpdateReported(ctx, patch); err != nil {
				return explainClient(fmt.Errorf("updating the reported properties of %s: %w", dev, err), dev)
			}
		}
		if *desired != "" || *tags != "" {
			var p client.TwinPatch
			if *desired != "" {
				if p.Desired, err = jsonObject("--desired", *desired); err != nil {
					return err
				}
			}
			if *tags != "" {
				if p.Tags, err = jsonObject("--tags", *tags); err != nil {
					return err
				}
			}
			if _, err := svc.UpdateTwin(ctx, dev, *module, p, *etag); err != nil {
				if errors.Is(err, client.ErrPreconditionFailed) {
					return fmt.Errorf("%w\n  the twin changed since --etag %s; read it again with `amqphub twin show %s`", err, *etag, dev)
				}
				return explainClient(fmt.Errorf("updating the twin of %s: %w", dev, err), dev)
			}
		}
	}
	t, err := svc.GetTwin(ctx, dev, *module)
	if err != nil {
		return explainClient(fmt.Errorf("reading the twin of %s: %w", dev, err), dev)
	}
	if cf.json {
		return printJSON(stdout, t)
	}
	fmt.Fprintf(stdout, "device:     %s\n", t.DeviceID)
	if t.ModuleID != "" {
		fmt.Fprintf(stdout, "module:     %s\n", t.ModuleID)
	}
	fmt.Fprintf(stdout, "etag:       %s\nversion:    %d\nconnection: %s\n", t.ETag, t.Version, t.ConnectionState)
	for _, sec := range []struct {
		name string
		v    map[string]any
	}{{"tags", t.Tags}, {"desired", withoutMetadata(t.Properties.Desired)}, {"reported", withoutMetadata(t.Properties.Reported)}} {
		b, err := json.MarshalIndent(sec.v, "  ", "  ")
		if err != nil {
			return err
		}
		if sec.v == nil {
			b = []byte("{}")
		}
		fmt.Fprintf(stdout, "%s:\n  %s\n", sec.name, b)
	}
	return nil
}

// jsonObject parses a flag's JSON object.
func jsonObject(name, s string) (map[string]any, error) {
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, fmt.Errorf(`%s must be a JSON object such as '{"name":"value"}': %v`, name, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%s: extra data after the JSON object", name)
	}
	return m, nil
}

// withoutMetadata drops $metadata, which is long and rarely wanted on a
// terminal (--json keeps it).
func withoutMetadata(m map[string]any) map[string]any {
	if _, ok := m["$metadata"]; !ok {
		return m
	}
	out := make(map[string]any, len(m))
	for k, v := range m {
		if k != "$metadata" {
			out[k] = v
		}
	}
	return out
}
