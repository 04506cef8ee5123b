package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"amqphub/client"
)

// clientFlags are hubFlags plus what AMQP commands need.
type clientFlags struct {
	hubFlags
	amqpAddr string
	timeout  time.Duration
	// log receives the client's connection events (lost, reconnecting).
	log *slog.Logger
}

// setLog sends the client's connection events to w, without timestamps.
func (c *clientFlags) setLog(w io.Writer) {
	c.log = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	}))
}

func (c *clientFlags) register(fs *flag.FlagSet, timeoutHelp string) {
	c.hubFlags.register(fs)
	fs.StringVar(&c.amqpAddr, "amqp-addr", os.Getenv("AMQPHUB_AMQP_ENDPOINT"),
		"where AMQP connects: host:port (TLS), or amqp://host:port for plain AMQP (env AMQPHUB_AMQP_ENDPOINT; default {HostName}:5671)")
	fs.DurationVar(&c.timeout, "timeout", 0, timeoutHelp)
}

// context returns the command's context: it ends on Ctrl-C, SIGTERM or
// after --timeout.
func (c *clientFlags) context() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if c.timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	return ctx, func() { cancel(); stop() }
}

func (c *clientFlags) service() (*client.ServiceClient, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	return client.NewServiceClient(c.connStr, &client.ServiceOptions{TLSConfig: tc, Address: c.amqpAddr, RESTURL: c.restURL, Logger: c.log})
}

// deviceFlags choose the device a command acts as.
type deviceFlags struct {
	device, module, connStr string
}

func (d *deviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.device, "device", "", "device id; its key is read from the registry with --hub")
	fs.StringVar(&d.module, "module", "", "module id (with --device-connection-string of the module)")
	fs.StringVar(&d.connStr, "device-connection-string", os.Getenv("AMQPHUB_DEVICE_CONNECTION_STRING"),
		"device (or module) connection string (env AMQPHUB_DEVICE_CONNECTION_STRING)")
}

// client connects as the device: from its connection string, or with the
// primary key the registry holds for --device.
func (d *deviceFlags) client(ctx context.Context, c *clientFlags) (*client.DeviceClient, error) {
	tc, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	cs := d.connStr
	if cs == "" {
		if d.device == "" {
			return nil, errors.New("which device? give --device ID (its key is read from the registry) or --device-connection-string")
		}
		if d.module != "" {
			return nil, errors.New("modules need --device-connection-string with the module's key")
		}
		reg, err := c.registry()
		if err != nil {
			return nil, err
		}
		dev, err := reg.GetDevice(ctx, d.device)
		reg.Close()
		if err != nil {
			return nil, explainClient(fmt.Errorf("reading the key of device %s: %w", d.device, err), d.device)
		}
		if dev.Authentication.SymmetricKey.PrimaryKey == "" {
			return nil, fmt.Errorf("device %s has no symmetric key; use --device-connection-string", d.device)
		}
		cs = client.DeviceConnection{HostName: reg.HostName(), DeviceID: dev.DeviceID, SharedAccessKey: dev.Authentication.SymmetricKey.PrimaryKey}.String()
	}
	return client.NewDeviceClient(cs, &client.DeviceOptions{TLSConfig: tc, Address: c.amqpAddr, Logger: c.log})
}

// explainClient says what to do about an error of an AMQP command.
func explainClient(err error, device string) error {
	if err == nil {
		return nil
	}
	if device == "" {
		device = "<id>"
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w\n  gave up after --timeout; is the hub reachable at --amqp-addr?", err)
	case errors.Is(err, client.ErrUnauthorized):
		return fmt.Errorf("%w\n  the hub refused the credentials: check --hub (service commands need a policy with ServiceConnect) or the device's key/connection string", err)
	case errors.Is(err, client.ErrDeviceNotOnline):
		return fmt.Errorf("%w\n  the device is not connected or has no direct-method handler; connect it first, or wait for it with --connect-timeout", err)
	case errors.Is(err, client.ErrDeviceNotFound):
		return fmt.Errorf("%w\n  no such device on this hub: list them with `amqphub device list`, create one with `amqphub device create %s`", err, device)
	case errors.Is(err, client.ErrQueueDepthExceeded):
		return fmt.Errorf("%w\n  the device's cloud-to-device queue is full: receive and complete messages (`amqphub c2d receive --device %s --count 50`)", err, device)
	case errors.Is(err, client.ErrMessageTooLarge):
		return fmt.Errorf("%w\n  the message exceeds the hub's limit (256 KiB on IoT Hub); send a smaller body or fewer messages per --batch", err)
	case errors.Is(err, client.ErrTimeout):
		return fmt.Errorf("%w\n  the hub or the device did not answer in time; raise --timeout (methods: --response-timeout)", err)
	case errors.Is(err, client.ErrThrottled):
		return fmt.Errorf("%w\n  the hub throttles this client: send slower (--rate)", err)
	}
	return explain(err)
}

// parseArgs parses flags that may come before or after positional
// arguments and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// propsFlag collects repeated --property name=value flags.
type propsFlag map[string]string

func (p propsFlag) String() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k+"="+p[k])
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

func (p propsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("property %q: want name=value", s)
	}
	p[k] = v
	return nil
}

// bodyFlags read a message body from --body or --file.
type bodyFlags struct {
	body, file string
}

func (b *bodyFlags) register(fs *flag.FlagSet, bodyHelp string) {
	fs.StringVar(&b.body, "body", "", bodyHelp)
	fs.StringVar(&b.file, "file", "", "read the body from this file (- for standard input)")
}

// read returns the body and whether one was given.
func (b *bodyFlags) read(stdin io.Reader) ([]byte, bool, error) {
	switch {
	case b.body != "" && b.file != "":
		return nil, false, errors.New("give --body or --file, not both")
	case b.file == "-":
		data, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		return data, true, err
	case b.file != "":
		data, err := os.ReadFile(b.file)
		if err != nil {
			return nil, false, fmt.Errorf("--file: %w", err)
		}
		return data, true, nil
	case b.body != "":
		return []byte(b.body), true, nil
	}
	return nil, false, nil
}

// bodyText shows a body: text as is, anything else as base64.
func bodyText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(b)
}

// bodyJSON puts a body in JSON output: parsed JSON, a string, or base64.
func bodyJSON(b []byte) (key string, v any) {
	if json.Valid(b) && len(b) > 0 {
		return "body", json.RawMessage(b)
	}
	if utf8.Valid(b) {
		return "body", string(b)
	}
	return "bodyBase64", base64.StdEncoding.EncodeToString(b)
}

// propsText formats properties as sorted name=value pairs.
func propsText(p map[string]string) string {
	return propsFlag(p).String()
}

// printLine writes one JSON object per line (for --json streams).
func printLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
