package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"amqphub/client"
)

// methodCmd invokes direct methods.
func methodCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "invoke" {
		return errors.New("usage: amqphub method invoke <device-id> <method> [--payload JSON] [--response-timeout 30s]")
	}
	fs := flag.NewFlagSet("method invoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "give up after this long (default: the method's timeouts plus 30s)")
	cf.setLog(stderr)
	var (
		module   = fs.String("module", "", "invoke the method on this module of the device")
		payload  = fs.String("payload", "null", "JSON payload")
		respWait = fs.Duration("response-timeout", 30*time.Second, "how long the hub waits for the device's answer (5s to 300s on IoT Hub)")
		connWait = fs.Duration("connect-timeout", 0, "how long the hub waits for the device to come online (default: it must be online)")
	)
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("usage: amqphub method invoke <device-id> <method> [--payload JSON]")
	}
	if !json.Valid([]byte(*payload)) {
		return fmt.Errorf(`--payload must be JSON (e.g. '{"delay":5}', '"text"' or 42), got %q`, *payload)
	}
	dev, name := pos[0], pos[1]
	ctx, cancel := cf.context()
	defer cancel()
	svc, err := cf.service()
	if err != nil {
		return err
	}
	defer svc.Close()
	res, err := svc.InvokeMethod(ctx, dev, *module, client.MethodCall{
		Name: name, Payload: json.RawMessage(*payload), ResponseTimeout: *respWait, ConnectTimeout: *connWait,
	})
	if err != nil {
		return explainClient(fmt.Errorf("method %s on %s: %w", name, dev, err), dev)
	}
	if cf.json {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "status: %d\npayload:\n", res.Status)
	var v any
	if err := json.Unmarshal(res.Payload, &v); err == nil {
		b, _ := json.MarshalIndent(v, "  ", "  ")
		fmt.Fprintf(stdout, "  %s\n", b)
	} else {
		fmt.Fprintf(stdout, "  %s\n", res.Payload)
	}
	return nil
}
