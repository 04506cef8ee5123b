package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"
)

// C2DConfig configures the cloud-to-device scenario.
type C2DConfig struct {
	// Devices is the number of device connections receiving. Default 16.
	Devices int
	// MessageSize is the payload size in bytes. Default 256.
	MessageSize int
	// Rate is the total offered rate in messages/s; 0 sends as fast as
	// the devices complete, with InFlight messages per device.
	Rate float64
	// InFlight bounds messages sent to one device and not yet received
	// by it. IoT Hub queues at most 50 per device, and a message leaves the
	// queue only once the device's completion is stored, some time after
	// the device received it; so at most 40. Default 32.
	InFlight int
	// Duration is how long messages are offered. Default 10 s.
	Duration time.Duration
	// Drain bounds the wait for outstanding feedback. Default 30 s.
	Drain time.Duration
	// Progress receives a status line every second; nil for none.
	Progress io.Writer
}

// RunC2D runs the cloud-to-device scenario: the service sends messages
// asking for full feedback (iothub-ack), each device completes (accepts)
// what it receives, and the service reads the feedback. A round trip ends
// when its Success feedback record arrives; the report's Latency is that
// round trip and DeliveryLatency the send-to-device time.
func RunC2D(ctx context.Context, t *Target, cfg C2DConfig) (*Report, error) {
	if t.Hub == nil {
		return nil, errors.New("loadgen: the c2d scenario needs an IoT hub target")
	}
	if cfg.Devices == 0 {
		cfg.Devices = 16
	}
	if cfg.MessageSize == 0 {
		cfg.MessageSize = 256
	}
	if cfg.InFlight == 0 {
		cfg.InFlight = 32
	}
	cfg.InFlight = min(cfg.InFlight, 40)
	if cfg.Duration == 0 {
		cfg.Duration = 10 * time.Second
	}
	if cfg.Drain == 0 {
		cfg.Drain = 30 * time.Second
	}
	if cfg.Devices < 0 || cfg.MessageSize < 0 || cfg.Rate < 0 || cfg.InFlight < 0 {
		return nil, errors.New("loadgen: devices, size, rate and in-flight must not be negative")
	}
	ids, err := t.identities(ctx, cfg.Devices)
	if err != nil {
		return nil, err
	}
	r := &c2dRun{t: t, cfg: cfg, ids: ids, recs: recordersFor(8), drecs: recordersFor(8)}
	defer r.close()
	if err := r.open(ctx); err != nil {
		return nil, err
	}
	return r.run(ctx), nil
}

type c2dRun struct {
	t     *Target
	cfg   C2DConfig
	ids   []Identity
	recs  []*recorder // round trips
	drecs []*recorder // send to device
	errs  errorSet

	svc   *goamqp.Conn
	snd   *goamqp.Sender
	fbRcv *goamqp.Receiver
	devs  []*c2dDevice

	// pending maps message ids to their intended send time until the
	// feedback arrives.
	pending sync.Map

	sent, accepted, rejected, failed, received, feedback atomic.Int64
	lastFeedback                                         atomic.Int64
	wg                                                   sync.WaitGroup
	ctx                                                  context.Context
	cancel                                               context.CancelFunc
}

type c2dDevice struct {
	conn   *goamqp.Conn
	rcv    *goamqp.Receiver
	window chan struct{}
}

func (r *c2dRun) open(ctx context.Context) error {
	r.ctx, r.cancel = context.WithCancel(context.Background())
	login, err := r.t.Hub.ServiceLogin()
	if err != nil {
		return err
	}
	if r.svc, err = r.t.dialAMQP(ctx, login, true); err != nil {
		return err
	}
	sess, err := r.svc.NewSession(ctx, nil)
	if err != nil {
		return fmt.Errorf("loadgen: service session: %w", err)
	}
	if r.snd, err = sess.NewSender(ctx, "/messages/devicebound", nil); err != nil {
		return c2dUnavailable("attach the service sender to /messages/devicebound", err)
	}
	if r.fbRcv, err = sess.NewReceiver(ctx, "/messages/serviceBound/feedback", &goamqp.ReceiverOptions{Credit: 1000}); err != nil {
		return c2dUnavailable("attach the feedback receiver", err)
	}
	r.devs = make([]*c2dDevice, len(r.ids))
	return parallel(ctx, len(r.ids), 32, func(ctx context.Context, i int) error {
		conn, err := r.t.dialAMQP(ctx, r.ids[i].Login, true)
		if err != nil {
			return err
		}
		d := &c2dDevice{conn: conn, window: make(chan struct{}, r.cfg.InFlight)}
		r.devs[i] = d
		sess, err := conn.NewSession(ctx, nil)
		if err != nil {
			return fmt.Errorf("loadgen: device session: %w", err)
		}
		d.rcv, err = sess.NewReceiver(ctx, r.ids[i].C2DAddress, &goamqp.ReceiverOptions{Credit: int32(r.cfg.InFlight)})
		if err != nil {
			return c2dUnavailable("attach a device receiver to "+r.ids[i].C2DAddress, err)
		}
		return nil
	})
}

// c2dUnavailable explains a refused attach: hubs without the C2D feature
// refuse its links with amqp:not-implemented.
func c2dUnavailable(what string, err error) error {
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil && le.RemoteErr.Condition == goamqp.ErrCondNotImplemented {
		return fmt.Errorf("loadgen: cloud-to-device messaging is not available on this hub yet (%s: %w)", what, err)
	}
	return fmt.Errorf("loadgen: %s: %w", what, err)
}

func (r *c2dRun) close() {
	if r.cancel != nil {
		r.cancel()
	}
	r.wg.Wait()
	for _, d := range r.devs {
		if d != nil {
			d.conn.Close()
		}
	}
	if r.svc != nil {
		r.svc.Close()
	}
}

func (r *c2dRun) run(ctx context.Context) *Report {
	cfg := r.cfg
	start := time.Now()
	end := start.Add(cfg.Duration)
	for i, d := range r.devs {
		r.wg.Add(1)
		go r.receive(i, d)
	}
	r.wg.Add(1)
	go r.readFeedback()
	stop := startProgress(cfg.Progress, time.Second, func(el time.Duration) string {
		line := fmt.Sprintf("c2d %5.1fs  sent %d  received %d  feedback %d", el.Seconds(), r.sent.Load(), r.received.Load(), r.feedback.Load())
		if l := summarize(merged(r.recs)); l != nil {
			line += fmt.Sprintf("  p50 %s  p99 %s", fmtMs(l.P50Ms), fmtMs(l.P99Ms))
		}
		return line
	})
	cpu := startCPU(r.t.HubPID)
	receipts := make(chan c2dReceipt, 4096)
	var wwg sync.WaitGroup
	wwg.Add(1)
	go func() {
		defer wwg.Done()
		for rc := range receipts {
			st, err := rc.r.Wait(r.ctx)
			if err == nil {
				err = stateErr(st)
			}
			if err == nil {
				r.accepted.Add(1)
				continue
			}
			var rej *errRejected
			if errors.As(err, &rej) {
				r.rejected.Add(1)
			} else {
				r.failed.Add(1)
			}
			r.errs.add(err)
			r.pending.Delete(rc.id)
			<-r.devs[rc.dev].window
		}
	}()
	var swg sync.WaitGroup
	for i := range r.devs {
		swg.Add(1)
		go func() {
			defer swg.Done()
			r.offer(ctx, i, start, end, receipts)
		}()
	}
	swg.Wait()
	close(receipts)
	wwg.Wait()
	deadline := time.Now().Add(cfg.Drain)
	for r.feedback.Load() < r.accepted.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	var cpuRep Report
	cpu.stop(&cpuRep)
	last := time.Unix(0, r.lastFeedback.Load())
	el := last.Sub(start).Seconds()
	if el <= 0 {
		el = time.Since(start).Seconds()
	}
	fb := r.feedback.Load()
	return &Report{
		Scenario:        "c2d",
		Target:          r.t.String(),
		Client:          ClientGoAMQP,
		Started:         start,
		Connections:     len(r.devs),
		MessageSize:     cfg.MessageSize,
		Rate:            cfg.Rate,
		InFlight:        cfg.InFlight,
		TLS:             r.t.TLS != nil,
		Seconds:         el,
		Sent:            r.sent.Load(),
		Accepted:        r.accepted.Load(),
		Rejected:        r.rejected.Load(),
		Failed:          r.failed.Load(),
		Received:        r.received.Load(),
		Feedback:        fb,
		MsgsPerSec:      float64(fb) / el,
		MBPerSec:        float64(fb) * float64(cfg.MessageSize) / el / 1e6,
		Latency:         summarize(merged(r.recs)),
		DeliveryLatency: summarize(merged(r.drecs)),
		Errors:          r.errs.all(),
		HubCores:        cpuRep.HubCores,
		LoadgenCores:    cpuRep.LoadgenCores,
	}
}

type c2dReceipt struct {
	r   goamqp.SendReceipt
	id  string
	dev int
}

// offer sends device dev's share of the messages.
func (r *c2dRun) offer(ctx context.Context, dev int, start, end time.Time, receipts chan<- c2dReceipt) {
	cfg := r.cfg
	d := r.devs[dev]
	body := make([]byte, cfg.MessageSize)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	var interval float64
	if cfg.Rate > 0 {
		interval = float64(time.Second) / cfg.Rate
	}
	n := len(r.devs)
	to := r.ids[dev].C2DAddress
	for k := int64(0); ctx.Err() == nil; k++ {
		var t0 time.Time
		if interval > 0 {
			t0 = start.Add(time.Duration(float64(k*int64(n)+int64(dev)) * interval))
			if !t0.Before(end) {
				return
			}
			if w := time.Until(t0); w > 0 {
				time.Sleep(w)
			}
		} else if !time.Now().Before(end) {
			return
		}
		select {
		case d.window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if interval == 0 {
			t0 = time.Now()
		}
		id := "lg-" + strconv.Itoa(dev) + "-" + strconv.FormatInt(k, 10)
		r.pending.Store(id, t0)
		msg := &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: id, To: &to},
			ApplicationProperties: map[string]any{"iothub-ack": "full"},
			Data:                  [][]byte{body},
		}
		rc, err := r.snd.SendWithReceipt(ctx, msg, nil)
		if err != nil {
			r.pending.Delete(id)
			<-d.window
			r.failed.Add(1)
			r.errs.add(err)
			return
		}
		r.sent.Add(1)
		receipts <- c2dReceipt{r: rc, id: id, dev: dev}
	}
}

// receive completes every message device i receives.
func (r *c2dRun) receive(i int, d *c2dDevice) {
	defer r.wg.Done()
	rec := r.drecs[i%len(r.drecs)]
	for {
		m, err := d.rcv.Receive(r.ctx, nil)
		if err != nil {
			if r.ctx.Err() == nil {
				r.errs.add(fmt.Errorf("device %d receive: %w", i, err))
			}
			return
		}
		now := time.Now()
		if err := d.rcv.AcceptMessage(r.ctx, m); err != nil && r.ctx.Err() == nil {
			r.errs.add(fmt.Errorf("device %d complete: %w", i, err))
		}
		if m.Properties != nil {
			if id, ok := m.Properties.MessageID.(string); ok {
				if v, ok := r.pending.Load(id); ok {
					rec.record(now.Sub(v.(time.Time)))
				}
			}
		}
		r.received.Add(1)
		select {
		case <-d.window:
		default:
		}
	}
}

// feedbackRecord is one record of a feedback message's JSON body.
type feedbackRecord struct {
	OriginalMessageID string `json:"originalMessageId"`
	DeviceID          string `json:"deviceId"`
	StatusCode        string `json:"statusCode"`
}

// readFeedback matches feedback records to the messages sent.
func (r *c2dRun) readFeedback() {
	defer r.wg.Done()
	i := 0
	for {
		m, err := r.fbRcv.Receive(r.ctx, nil)
		if err != nil {
			if r.ctx.Err() == nil {
				r.errs.add(fmt.Errorf("feedback receive: %w", err))
			}
			return
		}
		now := time.Now()
		r.fbRcv.AcceptMessage(r.ctx, m)
		var recs []feedbackRecord
		if err := json.Unmarshal(m.GetData(), &recs); err != nil {
			r.errs.add(fmt.Errorf("feedback body: %w", err))
			continue
		}
		for _, fr := range recs {
			v, ok := r.pending.LoadAndDelete(fr.OriginalMessageID)
			if !ok || !strings.EqualFold(fr.StatusCode, "Success") {
				if ok {
					r.errs.add(fmt.Errorf("feedback for %s: %s", fr.OriginalMessageID, fr.StatusCode))
				}
				continue
			}
			r.recs[i%len(r.recs)].record(now.Sub(v.(time.Time)))
			i++
			r.feedback.Add(1)
		}
		r.lastFeedback.Store(now.UnixNano())
	}
}
