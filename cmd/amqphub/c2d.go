package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"amqphub/client"
)

// c2dCmd sends cloud-to-device messages (as the service) or receives them
// (as a device).
func c2dCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: amqphub c2d send <device-id> [flags] | amqphub c2d receive --device <id> [flags]")
	}
	switch args[0] {
	case "send":
		return c2dSend(args[1:], stdin, stdout, stderr)
	case "receive":
		return c2dReceive(args[1:], stdout, stderr)
	}
	return fmt.Errorf("unknown c2d command %q (send, receive)", args[0])
}

func c2dSend(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("c2d send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "give up after this long (default 1m)")
	cf.setLog(stderr)
	var bf bodyFlags
	bf.register(fs, "message body")
	props := propsFlag{}
	fs.Var(props, "property", "application property name=value (repeatable)")
	var (
		module      = fs.String("module", "", "send to this module of the device")
		ack         = fs.String("ack", "none", "feedback to ask for: none, positive, negative or full")
		ttl         = fs.Duration("ttl", 0, "time to live (default: the hub's, 1 h on IoT Hub)")
		messageID   = fs.String("message-id", "", "message id (default: a new UUID)")
		correlation = fs.String("correlation-id", "", "correlation id")
		contentType = fs.String("content-type", "", "content type")
	)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: amqphub c2d send <device-id> [--body TEXT | --file F] [--ack full] [--ttl 10m] [--property k=v]")
	}
	ackMode, err := client.ParseAckMode(*ack)
	if err != nil {
		return fmt.Errorf("--ack: %w", err)
	}
	body, _, err := bf.read(stdin)
	if err != nil {
		return err
	}
	if cf.timeout == 0 {
		cf.timeout = time.Minute
	}
	ctx, cancel := cf.context()
	defer cancel()
	svc, err := cf.service()
	if err != nil {
		return err
	}
	defer svc.Close()
	msg := &client.Message{Body: body, MessageID: *messageID, CorrelationID: *correlation, ContentType: *contentType, Properties: props}
	if *ttl > 0 {
		msg.ExpiryTime = time.Now().Add(*ttl)
	}
	dev := pos[0]
	if err := svc.SendC2D(ctx, dev, msg, &client.C2DOptions{ModuleID: *module, Ack: ackMode}); err != nil {
		return explainClient(fmt.Errorf("sending to %s: %w", dev, err), dev)
	}
	if cf.json {
		return printJSON(stdout, map[string]any{"deviceId": dev, "moduleId": *module, "messageId": msg.MessageID, "ack": ackMode})
	}
	fmt.Fprintf(stdout, "queued message %s for %s (ack %s)\n", msg.MessageID, dev, ackMode)
	if ackMode != client.AckNone {
		fmt.Fprintln(stdout, "watch its feedback with: amqphub feedback")
	}
	return nil
}

func c2dReceive(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("c2d receive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "stop after this long (default: run until Ctrl-C or --count)")
	cf.setLog(stderr)
	var df deviceFlags
	df.register(fs)
	var (
		count   = fs.Int("count", 0, "stop after this many messages (default: no limit)")
		abandon = fs.Bool("abandon", false, "abandon the messages (the hub delivers them again) instead of completing them")
		reject  = fs.Bool("reject", false, "reject the messages (dead-letter them) instead of completing them")
	)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q (the device is given with --device or --device-connection-string)", pos[0])
	}
	if *abandon && *reject {
		return errors.New("give --abandon or --reject, not both")
	}
	ctx, cancel := cf.context()
	defer cancel()
	d, err := df.client(ctx, &cf)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Connect(ctx); err != nil {
		return explainClient(fmt.Errorf("connecting as device %s: %w", d.DeviceID(), err), d.DeviceID())
	}
	if !cf.json {
		fmt.Fprintf(stderr, "waiting for cloud-to-device messages for %s; Ctrl-C to stop\n", d.DeviceID())
	}
	action, settle := "completed", (*client.C2DMessage).Complete
	switch {
	case *abandon:
		action, settle = "abandoned", (*client.C2DMessage).Abandon
	case *reject:
		action, settle = "rejected", (*client.C2DMessage).Reject
	}
	for n := 0; *count == 0 || n < *count; n++ {
		m, err := d.ReceiveC2D(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || (errors.Is(err, context.DeadlineExceeded) && *count == 0) {
				return nil
			}
			return explainClient(fmt.Errorf("receiving after %d messages: %w", n, err), d.DeviceID())
		}
		if err := settle(m, ctx); err != nil {
			return explainClient(fmt.Errorf("message %s: %w", m.MessageID, err), d.DeviceID())
		}
		if cf.json {
			out := map[string]any{
				"messageId": m.MessageID, "enqueuedTime": m.EnqueuedTime.UTC().Format(time.RFC3339Nano),
				"deliveryCount": m.DeliveryCount, "ack": m.Ack, "outcome": action,
			}
			if m.CorrelationID != "" {
				out["correlationId"] = m.CorrelationID
			}
			if len(m.Properties) > 0 {
				out["properties"] = m.Properties
			}
			k, v := bodyJSON(m.Body)
			out[k] = v
			if err := printLine(stdout, out); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(stdout, "%s message %s: %s\n", m.EnqueuedTime.UTC().Format("2006-01-02T15:04:05.000Z"), m.MessageID, bodyText(m.Body))
		if len(m.Properties) > 0 {
			fmt.Fprintf(stdout, "    properties: %s\n", propsText(m.Properties))
		}
		fmt.Fprintf(stdout, "    %s (ack %s, delivery %d)\n", action, m.Ack, m.DeliveryCount+1)
	}
	return nil
}

// feedbackCmd prints feedback records of cloud-to-device messages.
func feedbackCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("feedback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "stop after this long (default: run until Ctrl-C or --count)")
	cf.setLog(stderr)
	var (
		count   = fs.Int("count", 0, "stop after this many records (default: no limit)")
		abandon = fs.Bool("abandon", false, "leave the records on the hub (abandon) instead of completing them")
	)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q", pos[0])
	}
	ctx, cancel := cf.context()
	defer cancel()
	svc, err := cf.service()
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return explainClient(fmt.Errorf("connecting: %w", err), "")
	}
	if !cf.json {
		fmt.Fprintln(stderr, "waiting for feedback on cloud-to-device messages; Ctrl-C to stop")
	}
	for n := 0; *count == 0 || n < *count; {
		b, err := svc.ReceiveFeedback(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) || (errors.Is(err, context.DeadlineExceeded) && *count == 0) {
				return nil
			}
			return explainClient(fmt.Errorf("receiving feedback after %d records: %w", n, err), "")
		}
		for _, r := range b.Records {
			n++
			if cf.json {
				if err := printLine(stdout, r); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintf(stdout, "%s %s message %s: %s\n", r.EnqueuedTime.UTC().Format("2006-01-02T15:04:05.000Z"), r.DeviceID, r.OriginalMessageID, r.StatusCode)
		}
		settle := b.Complete
		if *abandon {
			settle = b.Abandon
		}
		if err := settle(ctx); err != nil {
			return explainClient(fmt.Errorf("settling feedback: %w", err), "")
		}
	}
	return nil
}
