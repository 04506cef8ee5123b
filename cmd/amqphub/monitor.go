package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"amqphub/client"
)

// monitorCmd tails telemetry from every partition, like
// `az iot hub monitor-events`.
func monitorCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("monitor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "stop after this long (default: run until Ctrl-C)")
	cf.setLog(stderr)
	var (
		from      = fs.String("from", "latest", "where to start: earliest, latest, a sequence number, or an RFC 3339 time such as 2025-01-02T15:04:05Z")
		device    = fs.String("device", "", "show only this device's events")
		module    = fs.String("module", "", "show only this module's events")
		group     = fs.String("consumer-group", "$Default", "consumer group")
		count     = fs.Int("count", 0, "stop after this many events (default: no limit)")
		partition = fs.String("partitions", "", "comma-separated partitions to read (default: all)")
		noProps   = fs.Bool("no-properties", false, "do not print application properties")
		sysProps  = fs.Bool("system-properties", false, "print the hub's system properties (annotations)")
	)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q (filter devices with --device)", pos[0])
	}
	start, err := client.ParseStartPosition(*from)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	var parts []string
	if *partition != "" {
		parts = strings.Split(*partition, ",")
	}
	ctx, cancel := cf.context()
	defer cancel()
	svc, err := cf.service()
	if err != nil {
		return err
	}
	defer svc.Close()
	r, err := svc.NewEventReader(ctx, &client.EventReaderOptions{ConsumerGroup: *group, Partitions: parts, Start: start})
	if err != nil {
		return explainClient(fmt.Errorf("reading telemetry: %w", err), *device)
	}
	defer r.Close()
	if !cf.json {
		filter := ""
		if *device != "" {
			filter = ", device " + *device
		}
		fmt.Fprintf(stderr, "monitoring %d partitions of %s (consumer group %s%s) from %s; Ctrl-C to stop\n",
			len(r.Partitions()), r.EventHubName(), *group, filter, start)
	}
	for n := 0; *count == 0 || n < *count; {
		e, err := r.Receive(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || (errors.Is(err, context.DeadlineExceeded) && cf.timeout > 0 && *count == 0) {
				return nil // Ctrl-C, or --timeout with no count to reach
			}
			return explainClient(fmt.Errorf("reading telemetry after %d events: %w", n, err), *device)
		}
		if *device != "" && e.DeviceID != *device || *module != "" && e.ModuleID != *module {
			continue
		}
		n++
		if err := printEvent(stdout, e, cf.json, !*noProps, *sysProps); err != nil {
			return err
		}
	}
	return nil
}

func printEvent(w io.Writer, e *client.Event, asJSON, props, sys bool) error {
	if asJSON {
		out := map[string]any{
			"deviceId":       e.DeviceID,
			"partition":      e.Partition,
			"sequenceNumber": e.SequenceNumber,
			"offset":         e.Offset,
			"enqueuedTime":   e.EnqueuedTime.UTC().Format(time.RFC3339Nano),
		}
		if e.ModuleID != "" {
			out["moduleId"] = e.ModuleID
		}
		k, v := bodyJSON(e.Body)
		out[k] = v
		if props && len(e.Properties) > 0 {
			out["properties"] = e.Properties
		}
		sp := map[string]any{}
		for name, v := range map[string]string{"messageId": e.MessageID, "correlationId": e.CorrelationID, "contentType": e.ContentType, "contentEncoding": e.ContentEncoding} {
			if v != "" {
				sp[name] = v
			}
		}
		if sys {
			for name, v := range e.SystemProperties {
				if t, ok := v.(time.Time); ok {
					v = t.UTC().Format(time.RFC3339Nano)
				}
				sp[name] = v
			}
		}
		if len(sp) > 0 {
			out["systemProperties"] = sp
		}
		return printLine(w, out)
	}
	who := e.DeviceID
	if e.ModuleID != "" {
		who += "/" + e.ModuleID
	}
	fmt.Fprintf(w, "%s %s [partition %s, #%d] %s\n", e.EnqueuedTime.UTC().Format("2006-01-02T15:04:05.000Z"), who, e.Partition, e.SequenceNumber, bodyText(e.Body))
	if props && len(e.Properties) > 0 {
		fmt.Fprintf(w, "    properties: %s\n", propsText(e.Properties))
	}
	if sys {
		var parts []string
		for k, v := range e.SystemProperties {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
		slices.Sort(parts)
		fmt.Fprintf(w, "    system: %s\n", strings.Join(parts, " "))
	}
	return nil
}
