package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"amqphub/client"
	"amqphub/internal/auth"
	"amqphub/internal/tlsutil"
)

// hubFlags are the flags every client command shares: how to reach a hub.
type hubFlags struct {
	connStr string
	caFile  string
	restURL string
	json    bool
}

func (h *hubFlags) register(fs *flag.FlagSet) {
	def := os.Getenv("AMQPHUB_CONNECTION_STRING")
	if def == "" {
		def = "HostName=localhost;SharedAccessKeyName=iothubowner;SharedAccessKey=" + auth.DevIoTHubOwnerPrimaryKey
	}
	fs.StringVar(&h.connStr, "hub", def, "service connection string (env AMQPHUB_CONNECTION_STRING; default: the development hub on localhost)")
	fs.StringVar(&h.caFile, "ca", os.Getenv("AMQPHUB_CA"), "CA certificate to trust (env AMQPHUB_CA; default: amqphub-data/tls/ca.pem when present)")
	fs.StringVar(&h.restURL, "rest-url", os.Getenv("AMQPHUB_REST_URL"), "REST base URL (env AMQPHUB_REST_URL; default https://{HostName})")
	fs.BoolVar(&h.json, "json", false, "print JSON")
}

func (h *hubFlags) tlsConfig() (*tls.Config, error) {
	ca := h.caFile
	if ca == "" {
		if _, err := os.Stat(filepath.Join("amqphub-data", "tls", tlsutil.CACertFile)); err == nil {
			ca = filepath.Join("amqphub-data", "tls", tlsutil.CACertFile)
		}
	}
	if ca == "" {
		return nil, nil // system roots
	}
	pool, err := tlsutil.CAPool(ca)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

func (h *hubFlags) registry() (*client.Registry, error) {
	tc, err := h.tlsConfig()
	if err != nil {
		return nil, err
	}
	return client.NewRegistry(h.connStr, &client.RegistryOptions{TLSConfig: tc, BaseURL: h.restURL})
}

// explain turns client errors into what to do about them.
func explain(err error) error {
	switch {
	case errors.Is(err, client.ErrUnauthorized):
		return fmt.Errorf("%w\n  the hub refused the credentials: check --hub (a connection string of a policy with registry rights)", err)
	case strings.Contains(err.Error(), "connection refused"):
		return fmt.Errorf("%w\n  is the hub running? start it with `amqphub serve`, or point --hub/--rest-url at it", err)
	case strings.Contains(err.Error(), "certificate"):
		return fmt.Errorf("%w\n  trust the hub's CA with --ca (amqphub serve prints its path)", err)
	}
	return err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func deviceCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: amqphub device create|list|show|delete|connection-string <args>")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("device "+sub, flag.ContinueOnError)
	var hf hubFlags
	hf.register(fs)
	var (
		primary   = fs.String("primary-key", "", "create: primary key (default: generated)")
		secondary = fs.String("secondary-key", "", "create: secondary key (default: generated)")
		disabled  = fs.Bool("disabled", false, "create: create the device disabled")
		top       = fs.Int("top", 0, "list: at most this many devices")
		useSecond = fs.Bool("secondary", false, "connection-string: use the secondary key")
	)
	// Flags may follow the device id: parse around positional arguments.
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	reg, err := hf.registry()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	needID := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("usage: amqphub device %s <device-id>", sub)
		}
		return pos[0], nil
	}
	switch sub {
	case "create":
		id, err := needID()
		if err != nil {
			return err
		}
		d := client.Device{DeviceID: id, Status: "enabled"}
		if *disabled {
			d.Status = "disabled"
		}
		d.Authentication.SymmetricKey = client.SymmetricKey{PrimaryKey: *primary, SecondaryKey: *secondary}
		d, err = reg.CreateDevice(ctx, d)
		if err != nil {
			return explain(err)
		}
		if hf.json {
			return printJSON(stdout, d)
		}
		fmt.Fprintf(stdout, "created device %s (%s)\nconnection string:\n  %s\n", d.DeviceID, d.Status, deviceCS(reg.HostName(), d, false))
	case "list":
		ds, err := reg.ListDevices(ctx, *top)
		if err != nil {
			return explain(err)
		}
		if hf.json {
			return printJSON(stdout, ds)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tSTATUS\tCONNECTION\tLAST ACTIVITY")
		for _, d := range ds {
			last := "-"
			if !d.LastActivityTime.IsZero() && d.LastActivityTime.Year() > 1 {
				last = d.LastActivityTime.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.DeviceID, d.Status, d.ConnectionState, last)
		}
		return tw.Flush()
	case "show":
		id, err := needID()
		if err != nil {
			return err
		}
		d, err := reg.GetDevice(ctx, id)
		if err != nil {
			return explain(err)
		}
		if hf.json {
			return printJSON(stdout, d)
		}
		fmt.Fprintf(stdout, "device:        %s\nstatus:        %s\nconnection:    %s\ngeneration id: %s\netag:          %s\nprimary key:   %s\nsecondary key: %s\n",
			d.DeviceID, d.Status, d.ConnectionState, d.GenerationID, d.ETag,
			d.Authentication.SymmetricKey.PrimaryKey, d.Authentication.SymmetricKey.SecondaryKey)
	case "delete":
		id, err := needID()
		if err != nil {
			return err
		}
		if err := reg.DeleteDevice(ctx, id, ""); err != nil {
			return explain(err)
		}
		if hf.json {
			return printJSON(stdout, map[string]string{"deleted": id})
		}
		fmt.Fprintf(stdout, "deleted device %s\n", id)
	case "connection-string":
		id, err := needID()
		if err != nil {
			return err
		}
		d, err := reg.GetDevice(ctx, id)
		if err != nil {
			return explain(err)
		}
		cs := deviceCS(reg.HostName(), d, *useSecond)
		if hf.json {
			return printJSON(stdout, map[string]string{"deviceId": id, "connectionString": cs})
		}
		fmt.Fprintln(stdout, cs)
	default:
		return fmt.Errorf("unknown device command %q (create, list, show, delete, connection-string)", sub)
	}
	return nil
}

func deviceCS(host string, d client.Device, secondary bool) string {
	k := d.Authentication.SymmetricKey.PrimaryKey
	if secondary {
		k = d.Authentication.SymmetricKey.SecondaryKey
	}
	return client.DeviceConnection{HostName: host, DeviceID: d.DeviceID, SharedAccessKey: k}.String()
}

// tokenCmd prints a SAS token for a device (its key fetched from the
// registry, or from --connection-string) or for the hub's policy.
func tokenCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	var hf hubFlags
	hf.register(fs)
	var (
		device = fs.String("device", "", "device id (key read from the registry)")
		module = fs.String("module", "", "module id (with --device; key read from --connection-string only)")
		devCS  = fs.String("connection-string", "", "device connection string to sign with")
		ttl    = fs.Duration("ttl", time.Hour, "token lifetime")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var tok, who string
	var err error
	switch {
	case *devCS != "":
		dc, perr := client.ParseDeviceConnectionString(*devCS)
		if perr != nil {
			return perr
		}
		tok, err = dc.Token(*ttl)
		who = "device " + dc.DeviceID
	case *device != "":
		if *module != "" {
			return errors.New("module tokens need --connection-string with the module's key")
		}
		reg, rerr := hf.registry()
		if rerr != nil {
			return rerr
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d, gerr := reg.GetDevice(ctx, *device)
		if gerr != nil {
			return explain(gerr)
		}
		dc := client.DeviceConnection{HostName: reg.HostName(), DeviceID: d.DeviceID, SharedAccessKey: d.Authentication.SymmetricKey.PrimaryKey}
		tok, err = dc.Token(*ttl)
		who = "device " + d.DeviceID
	default:
		sc, perr := client.ParseServiceConnectionString(hf.connStr)
		if perr != nil {
			return perr
		}
		tok, err = sc.Token(*ttl)
		who = "policy " + sc.SharedAccessKeyName
	}
	if err != nil {
		return err
	}
	if hf.json {
		return printJSON(stdout, map[string]string{"for": who, "token": tok, "expires": time.Now().Add(*ttl).UTC().Format(time.RFC3339)})
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
