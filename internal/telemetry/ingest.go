package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"amqphub/amqp"
	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/hub"
	"amqphub/internal/registry"
	"amqphub/store/partlog"
)

// ingest is the endpoint of device events links.
type ingest struct {
	log     partlog.Log
	reg     registry.Store
	logger  *slog.Logger
	maxSize uint64
	credit  uint32
	now     func() time.Time
	// throttle limits devices and connections; nil when off (throttle.go).
	throttle *throttle

	// failing is set from the first failed append until the next
	// successful one, so an outage is logged once, not per message.
	failing  atomic.Bool
	rejected atomic.Int64
	// submits numbers deliveries as they are queued; outageFrom is the
	// number current when the outage began (outage.go).
	submits    atomic.Uint64
	outageFrom atomic.Uint64
	outageMu   sync.Mutex
	outage     outageState // guarded by outageMu
	pool       sync.Pool
}

// sender is one device events link. Its fields are used only on the
// connection's reader goroutine.
type sender struct {
	in        *ingest
	partition int
	pairs     []byte // encoded fixed annotation pairs, then the enqueued time
	fixed     int    // length of the fixed pairs in pairs
	npairs    int    // annotation pairs including the enqueued time
	buf       []byte // stamped records of the current delivery
	ends      []int  // end of each record in buf
	secs      []frames.Section
	limit     *linkThrottle // nil when throttling is off
}

// keepScratch bounds the scratch memory a link keeps between messages, so
// many idle links do not each pin the largest message they ever sent.
const keepScratch = 64 << 10

// Attach implements hub.Endpoint for /devices/{id}[/modules/{mid}]/messages/events.
func (in *ingest) Attach(req *hub.AttachRequest) *amqp.Error {
	l := req.Link
	if l.IsSender() {
		return amqp.NewError(amqp.ErrCondNotImplemented,
			"receiving on a messages/events address (IoT Edge module input) is not supported; devices send telemetry there")
	}
	s, aerr := in.newSender(req)
	if aerr != nil {
		return aerr
	}
	s.limit = in.throttle.forLink(req)
	l.SetMaxMessageSize(in.maxSize)
	if in.credit > 0 {
		l.SetCreditWindow(in.credit)
	}
	l.OnMessage(s.onMessage)
	return nil
}

// newSender encodes, once per link, the annotations every message of the
// link gets.
func (in *ingest) newSender(req *hub.AttachRequest) (*sender, *amqp.Error) {
	r, id := req.Route, req.Identity
	genID := id.GenerationID
	if id.Kind == auth.KindPolicy {
		// A hub-level token with DeviceConnect acts for any device: the
		// generation id must come from the registry.
		var aerr *amqp.Error
		if genID, aerr = in.lookupGeneration(r.DeviceID, r.ModuleID); aerr != nil {
			return nil, aerr
		}
	}
	scope := "device"
	switch {
	case id.PolicyName != "":
		scope = "hub"
	case id.Kind == auth.KindModule:
		scope = "module"
	}
	s := &sender{in: in, partition: Partition(r.DeviceID, in.log.Partitions())}
	p := encoding.AppendSymbol(nil, AnnDeviceID)
	p = encoding.AppendString(p, r.DeviceID)
	s.npairs = 1
	if r.ModuleID != "" {
		p = encoding.AppendSymbol(p, AnnModuleID)
		p = encoding.AppendString(p, r.ModuleID)
		s.npairs++
	}
	p = encoding.AppendSymbol(p, AnnAuthMethod)
	p = encoding.AppendString(p, `{"scope":"`+scope+`","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`)
	p = encoding.AppendSymbol(p, AnnAuthGenerationID)
	p = encoding.AppendString(p, genID)
	p = encoding.AppendSymbol(p, AnnMessageSource)
	p = encoding.AppendString(p, messageSourceTelemetry)
	p = encoding.AppendSymbol(p, AnnEnqueuedTime)
	s.fixed = len(p)
	s.npairs += 4
	s.pairs = p
	return s, nil
}

func (in *ingest) lookupGeneration(deviceID, moduleID string) (string, *amqp.Error) {
	if in.reg == nil {
		return "", amqp.NewError(amqp.ErrCondInternalError, "no device registry to resolve the device")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, err := in.reg.GetDevice(ctx, deviceID)
	if err != nil {
		return "", registryError(err, "device "+deviceID)
	}
	if dev.Status != registry.StatusEnabled {
		return "", amqp.NewError(amqp.ErrCondUnauthorizedAccess, fmt.Sprintf("device %q is disabled", deviceID))
	}
	if moduleID == "" {
		return dev.GenerationID, nil
	}
	mod, err := in.reg.GetModule(ctx, deviceID, moduleID)
	if err != nil {
		return "", registryError(err, "module "+deviceID+"/"+moduleID)
	}
	return mod.GenerationID, nil
}

func registryError(err error, what string) *amqp.Error {
	if errors.Is(err, registry.ErrDeviceNotFound) || errors.Is(err, registry.ErrModuleNotFound) {
		return amqp.NewError(amqp.ErrCondNotFound, what+" is not registered")
	}
	return amqp.NewError(amqp.ErrCondInternalError, "looking up "+what+" failed")
}

// onMessage stamps the delivery's message(s) and queues them in the log;
// the delivery is settled when the log reports them durable.
func (s *sender) onMessage(d *amqp.Delivery) {
	in := s.in
	s.pairs = appendTimestampMs(s.pairs[:s.fixed], in.now().UnixMilli())
	s.buf, s.ends = s.buf[:0], s.ends[:0]
	var err error
	switch d.Format {
	case 0:
		s.buf, err = appendStored(s.buf, d.Payload, s.pairs, s.npairs, isHubKey, true)
		s.ends = append(s.ends, len(s.buf))
	case frames.MessageFormatBatch:
		err = s.stampBatch(d.Payload)
	default:
		err = fmt.Errorf("message format 0x%08x is not supported (use 0, or 0x%08x for a batch)", d.Format, frames.MessageFormatBatch)
	}
	if err != nil {
		d.Reject(amqp.NewError(amqp.ErrCondDecodeError, err.Error()))
		s.trim()
		return
	}
	if s.throttled(d, len(s.ends)) {
		return
	}
	p := in.pending(d, len(s.ends))
	start := 0
	for _, end := range s.ends {
		if err := in.log.AppendAsync(s.partition, s.buf[start:end], p.fn); err != nil {
			p.complete(partlog.Entry{}, err)
		}
		start = end
	}
	// The log copied the records; the sent bytes are no longer needed
	// while the delivery waits for durability.
	d.Payload = nil
	p.complete(partlog.Entry{}, nil) // the submitter's share
	s.trim()
}

// stampBatch stamps every message of a batch: each data section of the
// outer message is one encoded message. Other sections of the outer
// message (its envelope) are not stored.
func (s *sender) stampBatch(outer []byte) error {
	var err error
	if s.secs, err = frames.SplitSections(outer, s.secs[:0]); err != nil {
		return fmt.Errorf("%w: batch: %w", ErrBadMessage, err)
	}
	var r encoding.Reader
	n := 0
	for _, sec := range s.secs {
		if sec.Code != frames.CodeData {
			continue
		}
		r.Reset(sec.Raw)
		if _, _, err := r.ReadDescriptor(); err != nil {
			return fmt.Errorf("%w: batch message %d: %w", ErrBadMessage, n, err)
		}
		inner, err := r.ReadBinary()
		if err != nil {
			return fmt.Errorf("%w: batch message %d: %w", ErrBadMessage, n, err)
		}
		if s.buf, err = appendStored(s.buf, inner, s.pairs, s.npairs, isHubKey, true); err != nil {
			return fmt.Errorf("batch message %d: %w", n, err)
		}
		s.ends = append(s.ends, len(s.buf))
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: the batch holds no messages (no data sections)", ErrBadMessage)
	}
	return nil
}

func (s *sender) trim() {
	if cap(s.buf) > keepScratch {
		s.buf = nil
	}
	if cap(s.ends) > 1024 {
		s.ends = nil
	}
	if cap(s.secs) > 1024 {
		s.secs = nil
	}
}

// pendingDelivery counts the records of one delivery still on their way to
// disk. Pooled, with its completion function bound once, so the hot path
// allocates nothing per message.
type pendingDelivery struct {
	in   *ingest
	d    *amqp.Delivery
	left atomic.Int32
	fn   func(partlog.Entry, error)
	seq  uint64 // submission number (outage.go)

	mu  sync.Mutex
	err error
}

// pending returns a tracker for d carrying n records. It holds one extra
// share for the submitter, so d cannot be settled before every record was
// queued.
func (in *ingest) pending(d *amqp.Delivery, n int) *pendingDelivery {
	p, _ := in.pool.Get().(*pendingDelivery)
	if p == nil {
		p = &pendingDelivery{in: in}
		p.fn = p.complete
	}
	p.d = d
	p.seq = in.submits.Add(1)
	p.left.Store(int32(n) + 1)
	return p
}

func (p *pendingDelivery) complete(_ partlog.Entry, err error) {
	if err != nil {
		p.mu.Lock()
		if p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
	}
	if p.left.Add(-1) != 0 {
		return
	}
	d, in, seq := p.d, p.in, p.seq
	p.mu.Lock()
	err = p.err
	p.err = nil
	p.mu.Unlock()
	p.d = nil
	in.pool.Put(p)
	in.settle(d, err, seq)
}

// settle reports the outcome of a delivery whose records are all durable
// (err == nil) or of which at least one could not be stored. A partly
// stored batch is rejected as a whole: the device retries it, and the
// records already stored appear twice.
func (in *ingest) settle(d *amqp.Delivery, err error, seq uint64) {
	if err == nil {
		if in.failing.Load() {
			in.appendRecovered(seq)
		}
		d.Accept()
		return
	}
	if errors.Is(err, partlog.ErrPayloadTooLarge) {
		d.Reject(amqp.NewError(amqp.ErrCondMessageSizeExceeded, "the stamped message exceeds the log's record size limit"))
		return
	}
	in.appendFailed(err)
	d.Reject(amqp.NewError(amqp.ErrCondInternalError, "the hub could not store the message; retry later"))
}
