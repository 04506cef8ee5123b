package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/client"
)

// defaultBody is sent when neither --body nor --file is given.
const defaultBody = `{"n":{{n}},"time":"{{time}}"}`

// sendCmd sends device telemetry.
func sendCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs, "give up after this long (default: none; a lost connection is retried)")
	cf.setLog(stderr)
	var df deviceFlags
	df.register(fs)
	var bf bodyFlags
	bf.register(fs, "message body; {{n}} is replaced by the message number, {{time}} by the time (default "+defaultBody+")")
	props := propsFlag{}
	fs.Var(props, "property", "application property name=value (repeatable)")
	var (
		count       = fs.Int("count", 1, "number of messages")
		rate        = fs.Float64("rate", 0, "messages per second (default: as fast as the hub accepts them)")
		batch       = fs.Int("batch", 1, "messages per AMQP batch (format 0x80013700)")
		parallel    = fs.Int("parallel", 1, "messages (or batches) in flight at once")
		contentType = fs.String("content-type", "", "content type (default application/json for the default body)")
		encoding    = fs.String("content-encoding", "", "content encoding, e.g. utf-8")
		quiet       = fs.Bool("quiet", false, "no progress line")
	)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q (the device is given with --device or --device-connection-string)", pos[0])
	}
	if *count < 1 || *batch < 1 || *parallel < 1 || *rate < 0 {
		return errors.New("--count, --batch and --parallel must be at least 1, --rate not negative")
	}
	body, given, err := bf.read(stdin)
	if err != nil {
		return err
	}
	tmpl := string(body)
	if !given {
		tmpl = defaultBody
		if *contentType == "" {
			*contentType = "application/json"
		}
	}
	// A file is sent as is; text templates get their placeholders filled.
	fill := bf.file == ""
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

	newMsg := func(n int) *client.Message {
		b := body
		if fill {
			b = []byte(strings.NewReplacer("{{n}}", strconv.Itoa(n), "{{time}}", time.Now().UTC().Format(time.RFC3339Nano)).Replace(tmpl))
		}
		return &client.Message{Body: b, ContentType: *contentType, ContentEncoding: *encoding, Properties: props}
	}

	sendCtx, stopSending := context.WithCancel(ctx)
	defer stopSending()
	// A pacer hands out batch start numbers at --rate; workers send them.
	jobs := make(chan int)
	go func() {
		defer close(jobs)
		start := time.Now()
		for n := 0; n < *count; n += *batch {
			if *rate > 0 {
				due := start.Add(time.Duration(float64(n) / *rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-t.C:
					case <-sendCtx.Done():
						t.Stop()
						return
					}
				}
			}
			select {
			case jobs <- n:
			case <-sendCtx.Done():
				return
			}
		}
	}()
	var sent atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range *parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range jobs {
				if sendCtx.Err() != nil {
					continue
				}
				k := min(*batch, *count-n)
				var err error
				if *batch == 1 {
					err = d.SendEvent(sendCtx, newMsg(n))
				} else {
					ms := make([]*client.Message, k)
					for i := range ms {
						ms[i] = newMsg(n + i)
					}
					err = d.SendEventBatch(sendCtx, ms)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err; stopSending() })
					continue
				}
				sent.Add(int64(k))
			}
		}()
	}
	started := time.Now()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	progress := !*quiet && !cf.json && *count > 1
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	shown := false
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			if progress {
				n := sent.Load()
				fmt.Fprintf(stderr, "\rsent %d/%d (%.0f msg/s)   ", n, *count, float64(n)/time.Since(started).Seconds())
				shown = true
			}
		}
	}
	if shown {
		fmt.Fprintln(stderr)
	}
	elapsed := time.Since(started)
	n := sent.Load()
	rateDone := float64(n) / max(elapsed.Seconds(), 1e-9)
	if firstErr == nil && ctx.Err() != nil && n < int64(*count) {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return explainClient(fmt.Errorf("sent %d of %d messages as device %s, then: %w", n, *count, d.DeviceID(), firstErr), d.DeviceID())
	}
	if cf.json {
		return printJSON(stdout, map[string]any{"deviceId": d.DeviceID(), "moduleId": d.ModuleID(), "sent": n, "seconds": elapsed.Seconds(), "messagesPerSecond": rateDone})
	}
	who := "device " + d.DeviceID()
	if d.ModuleID() != "" {
		who = "module " + d.DeviceID() + "/" + d.ModuleID()
	}
	plural := "s"
	if n == 1 {
		plural = ""
	}
	fmt.Fprintf(stdout, "sent %d message%s as %s in %s (%.0f msg/s)\n", n, plural, who, elapsed.Round(time.Millisecond), rateDone)
	return nil
}
