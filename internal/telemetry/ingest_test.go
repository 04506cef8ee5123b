package telemetry_test

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog"
)

func ptr[T any](v T) *T { return &v }

func authJSON(scope string) string {
	return `{"scope":"` + scope + `","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`
}

// checkStamp checks the annotations the hub stamps, with their AMQP types.
func checkStamp(t *testing.T, m *frames.Message, dev, module, scope, genID string, after, before time.Time) {
	t.Helper()
	a := m.Annotations
	want := map[encoding.Symbol]any{
		telemetry.AnnDeviceID:         dev,
		telemetry.AnnAuthMethod:       authJSON(scope),
		telemetry.AnnAuthGenerationID: genID,
		telemetry.AnnMessageSource:    "Telemetry",
	}
	if module != "" {
		want[telemetry.AnnModuleID] = module
	} else if v, ok := a[encoding.Symbol(telemetry.AnnModuleID)]; ok {
		t.Errorf("module-id %v on a device message", v)
	}
	for k, v := range want {
		got, ok := a[k]
		if !ok {
			t.Errorf("annotation %s missing (have %v)", k, a)
			continue
		}
		if got != v {
			t.Errorf("annotation %s = %#v (%T), want %#v (string)", k, got, got, v)
		}
	}
	et, ok := a[encoding.Symbol(telemetry.AnnEnqueuedTime)].(time.Time)
	if !ok {
		t.Errorf("iothub-enqueuedtime is %T, want a timestamp", a[encoding.Symbol(telemetry.AnnEnqueuedTime)])
	} else if et.Before(after.Truncate(time.Millisecond)) || et.After(before) {
		t.Errorf("iothub-enqueuedtime %v not within [%v, %v]", et, after, before)
	}
	if m.DeliveryAnnotations != nil {
		t.Errorf("delivery annotations stored: %v", m.DeliveryAnnotations)
	}
}

func sectionRaw(t *testing.T, b []byte, code uint64) []byte {
	t.Helper()
	secs, err := frames.SplitSections(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secs {
		if s.Code == code {
			return s.Raw
		}
	}
	return nil
}

func TestIngestDevice(t *testing.T) {
	s := startHub(t, nil)
	dev, err := s.Registry.GetDevice(context.Background(), "d1")
	if err != nil {
		t.Fatal(err)
	}
	snd := deviceSender(t, s, "d1", "", nil)
	if got := snd.MaxMessageSize(); got != telemetry.DefaultMaxMessageSize {
		t.Errorf("advertised max-message-size %d, want %d", got, telemetry.DefaultMaxMessageSize)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	part := telemetry.Partition("d1", testPartitions)

	single := func(id string) *goamqp.Message {
		return &goamqp.Message{
			DeliveryAnnotations: goamqp.Annotations{"x-opt-hop": "edge"},
			Annotations: goamqp.Annotations{
				"Diagnostic-Id":              "00-" + id,
				telemetry.AnnDeviceID:        "spoofed",
				"iothub-connection-other":    "spoofed",
				telemetry.AnnMessageSource:   "spoofed",
				"iothub-interface-id":        "dtmi:com:example;1",
				telemetry.AnnEnqueuedTime:    time.Unix(0, 0),
				"iothub-connection-moduleid": "spoofed",
			},
			Properties: &goamqp.MessageProperties{
				MessageID: id, CorrelationID: "corr-" + id, To: ptr("/devices/d1/messages/events"),
				ContentType: ptr("application/json"), ContentEncoding: ptr("utf-8"),
			},
			ApplicationProperties: map[string]any{"temp": int32(21), "unit": "C"},
			Data:                  [][]byte{[]byte(`{"id":"` + id + `"}`)},
		}
	}
	var inner [][]byte
	for i := range 3 {
		m := &goamqp.Message{
			Properties:            &goamqp.MessageProperties{MessageID: fmt.Sprintf("b%d", i), ContentType: ptr("text/plain")},
			ApplicationProperties: map[string]any{"i": int64(i)},
			Data:                  [][]byte{[]byte(fmt.Sprintf("batch body %d", i))},
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		inner = append(inner, b)
	}

	before := time.Now()
	if err := snd.Send(ctx, single("s0"), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	// Accepted means durable: the record is readable at once.
	if n := len(readAll(t, s.Log, part)); n != 1 {
		t.Fatalf("after the first acknowledgement partition %d holds %d records", part, n)
	}
	if err := snd.Send(ctx, &goamqp.Message{Format: frames.MessageFormatBatch, Data: inner}, nil); err != nil {
		t.Fatalf("send batch: %v", err)
	}
	if n := len(readAll(t, s.Log, part)); n != 4 {
		t.Fatalf("after the batch's acknowledgement partition %d holds %d records", part, n)
	}
	if err := snd.Send(ctx, single("s1"), nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	after := time.Now()

	for p := range testPartitions {
		if p != part {
			if recs := readAll(t, s.Log, p); len(recs) != 0 {
				t.Errorf("partition %d (not d1's) holds %d records", p, len(recs))
			}
		}
	}
	recs := readAll(t, s.Log, part)
	if len(recs) != 5 {
		t.Fatalf("partition %d holds %d records, want 5", part, len(recs))
	}
	wantIDs := []string{"s0", "b0", "b1", "b2", "s1"}
	for i, rec := range recs {
		if rec.Seq != int64(i) {
			t.Errorf("record %d has sequence number %d", i, rec.Seq)
		}
		m := decodeRecord(t, rec)
		checkStamp(t, m, "d1", "", "device", dev.GenerationID, before, after)
		if m.Properties == nil || m.Properties.MessageID != wantIDs[i] {
			t.Fatalf("record %d: properties %+v, want message-id %s", i, m.Properties, wantIDs[i])
		}
	}
	// Single messages: the device's own annotations are kept, the hub's
	// keys are not spoofable, the rest is as sent.
	for _, i := range []int{0, 4} {
		m := decodeRecord(t, recs[i])
		a := m.Annotations
		id := wantIDs[i]
		if a[encoding.Symbol("Diagnostic-Id")] != "00-"+id || a[encoding.Symbol("iothub-interface-id")] != "dtmi:com:example;1" {
			t.Errorf("device annotations lost: %v", a)
		}
		if _, ok := a[encoding.Symbol("iothub-connection-other")]; ok {
			t.Errorf("device set an iothub-connection-* annotation: %v", a)
		}
		if _, ok := a[encoding.Symbol("iothub-connection-moduleid")]; ok {
			t.Errorf("device set an iothub-connection-* annotation: %v", a)
		}
		p := m.Properties
		if p.CorrelationID != "corr-"+id || p.To != "/devices/d1/messages/events" || p.ContentType != "application/json" || p.ContentEncoding != "utf-8" {
			t.Errorf("properties %+v", p)
		}
		if m.ApplicationProperties["temp"] != int32(21) || m.ApplicationProperties["unit"] != "C" || len(m.ApplicationProperties) != 2 {
			t.Errorf("application properties %v", m.ApplicationProperties)
		}
		if len(m.Data) != 1 || string(m.Data[0]) != `{"id":"`+id+`"}` {
			t.Errorf("body %q", m.Data)
		}
	}
	// Batch messages: properties, application properties and body are the
	// sender's bytes.
	for i, b := range inner {
		rec := recs[1+i].Payload
		for _, code := range []uint64{frames.CodeProperties, frames.CodeAppProperties, frames.CodeData} {
			if want, got := sectionRaw(t, b, code), sectionRaw(t, rec, code); want == nil || !bytes.Equal(want, got) {
				t.Errorf("batch message %d section 0x%x: stored %x, sent %x", i, code, got, want)
			}
		}
	}
}

func TestIngestModuleAndPolicy(t *testing.T) {
	s := startHub(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mod, err := s.Registry.GetModule(ctx, "d1", "m1")
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.Registry.GetDevice(ctx, "d2")
	if err != nil {
		t.Fatal(err)
	}
	user, token := ownerLogin(t, s)
	owner := dial(t, s.AMQPAddr, user, token)
	tests := []struct {
		name, dev, module, scope, genID string
		snd                             *goamqp.Sender
	}{
		{"module with its own key", "d1", "m1", "module", mod.GenerationID, deviceSender(t, s, "d1", "m1", nil)},
		{"hub-level token with DeviceConnect", "d2", "", "hub", d2.GenerationID, openSender(t, owner, "/devices/d2/messages/events", nil)},
		{"hub-level token for a module", "d1", "m1", "hub", mod.GenerationID, openSender(t, owner, "/devices/d1/modules/m1/messages/events", nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			part := telemetry.Partition(tc.dev, testPartitions)
			n := len(readAll(t, s.Log, part))
			before := time.Now()
			if err := tc.snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte(tc.name)}}, nil); err != nil {
				t.Fatal(err)
			}
			recs := readAll(t, s.Log, part)
			if len(recs) != n+1 {
				t.Fatalf("partition %d holds %d records, want %d", part, len(recs), n+1)
			}
			m := decodeRecord(t, recs[n])
			checkStamp(t, m, tc.dev, tc.module, tc.scope, tc.genID, before, time.Now())
			if len(m.Data) != 1 || string(m.Data[0]) != tc.name {
				t.Errorf("body %q", m.Data)
			}
		})
	}
	// A hub-level token for a device that does not exist.
	sess, err := owner.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.NewSender(ctx, "/devices/nobody/messages/events", nil); condOf(err) != goamqp.ErrCondNotFound {
		t.Errorf("unknown device: %v, want %s", err, goamqp.ErrCondNotFound)
	}
}

func TestIngestPresettled(t *testing.T) {
	s := startHub(t, nil)
	snd := deviceSender(t, s, "d2", "", &goamqp.SenderOptions{SettlementMode: goamqp.SenderSettleModeSettled.Ptr()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 50
	for i := range n {
		if err := snd.Send(ctx, &goamqp.Message{Properties: &goamqp.MessageProperties{MessageID: uint64(i)}, Data: [][]byte{{byte(i)}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	recs := waitRecords(t, s.Log, telemetry.Partition("d2", testPartitions), n)
	for i, rec := range recs {
		if m := decodeRecord(t, rec); m.Properties.MessageID != uint64(i) || rec.Seq != int64(i) {
			t.Fatalf("record %d: seq %d message-id %v", i, rec.Seq, m.Properties.MessageID)
		}
	}
}

func TestIngestRejectsMalformed(t *testing.T) {
	s := startHub(t, nil)
	snd := deviceSender(t, s, "d3", "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good, err := (&goamqp.Message{Data: [][]byte{[]byte("ok")}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// application-properties with a symbol key, which IoT Hub clients cannot read.
	symKey := append(encoding.AppendDescriptor(nil, frames.CodeAppProperties), encoding.TypeMap8, 6, 2, encoding.TypeSym8, 1, 'k', encoding.TypeNull)
	tests := []struct {
		name string
		msg  *goamqp.Message
	}{
		{"batch with an undecodable message", &goamqp.Message{Format: frames.MessageFormatBatch, Data: [][]byte{good, {1, 2, 3}}}},
		{"batch with a bad application property", &goamqp.Message{Format: frames.MessageFormatBatch, Data: [][]byte{good, symKey}}},
		{"batch without data sections", &goamqp.Message{Format: frames.MessageFormatBatch, Value: "no data"}},
		{"unknown message format", &goamqp.Message{Format: 7, Data: [][]byte{[]byte("x")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := snd.Send(ctx, tc.msg, nil)
			if condOf(err) != goamqp.ErrCondDecodeError {
				t.Fatalf("got %v, want rejected with %s", err, goamqp.ErrCondDecodeError)
			}
		})
	}
	// The link still works, and nothing of the refused messages was stored.
	if err := snd.Send(ctx, &goamqp.Message{Data: [][]byte{[]byte("after")}}, nil); err != nil {
		t.Fatalf("send after rejections: %v", err)
	}
	recs := readAll(t, s.Log, telemetry.Partition("d3", testPartitions))
	if len(recs) != 1 || string(decodeRecord(t, recs[0]).Data[0]) != "after" {
		t.Fatalf("partition holds %d records, want only the good one", len(recs))
	}
}

func TestIngestModuleInputRefused(t *testing.T) {
	s := startHub(t, nil)
	user, token := deviceLogin(t, s, "d1", "m1")
	c := dial(t, s.AMQPAddr, user, token)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.NewReceiver(ctx, "/devices/d1/modules/m1/messages/events", nil); condOf(err) != goamqp.ErrCondNotImplemented {
		t.Fatalf("module input receiver: %v, want %s", err, goamqp.ErrCondNotImplemented)
	}
}

func TestSetupConfig(t *testing.T) {
	s := startHub(t, nil)
	tests := []struct {
		cfg telemetry.Config
		ok  bool
	}{
		{telemetry.Config{}, true},
		{telemetry.Config{MaxMessageSize: 64 << 10, CreditWindow: 10}, true},
		{telemetry.Config{MaxMessageSize: 100}, false},
		{telemetry.Config{MaxMessageSize: 2 << 20}, false},
	}
	for _, tc := range tests {
		_, err := telemetry.Setup(testEnv(s, s.Log, nil), tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("Setup(%+v): %v", tc.cfg, err)
		}
	}
	if _, err := telemetry.Setup(testEnv(s, nil, nil), telemetry.Config{}); err == nil {
		t.Error("Setup without a log succeeded")
	}
}

func TestPartitionStable(t *testing.T) {
	// The hash is part of the data layout: it must stay FNV-1a (32 bit)
	// of the id, modulo the partition count.
	if got := telemetry.Partition("a", 7); got != int(uint32(0xe40c292c)%7) {
		t.Errorf("Partition(a, 7) = %d", got)
	}
	counts := make([]int, 8)
	for i := range 1000 {
		id := fmt.Sprintf("device-%d", i)
		h := fnv.New32a()
		h.Write([]byte(id))
		for _, n := range []int{1, 3, 4, 8, 32} {
			if got, want := telemetry.Partition(id, n), int(h.Sum32()%uint32(n)); got != want {
				t.Fatalf("Partition(%q, %d) = %d, want %d", id, n, got, want)
			}
		}
		counts[telemetry.Partition(id, 8)]++
	}
	for p, c := range counts {
		if c < 80 || c > 170 {
			t.Errorf("partition %d got %d of 1000 devices", p, c)
		}
	}
	if got := telemetry.Partition("d1", 0); got != 0 {
		t.Errorf("Partition with 0 partitions = %d", got)
	}
}

var _ partlog.Log = (*gateLog)(nil)

func TestIngestConsecutiveAcrossConnections(t *testing.T) {
	s := startHub(t, func(o *server.Options) { o.Partitions = 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	snds := []*goamqp.Sender{deviceSender(t, s, "d1", "", nil), deviceSender(t, s, "d2", "", nil), deviceSender(t, s, "d3", "", nil)}
	const per = 40
	errs := make(chan error, len(snds))
	for i, snd := range snds {
		go func() {
			for j := range per {
				if err := snd.Send(ctx, &goamqp.Message{ApplicationProperties: map[string]any{"n": int64(j)}, Data: [][]byte{{byte(i)}}}, nil); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range snds {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	recs := readAll(t, s.Log, 0)
	if len(recs) != per*len(snds) {
		t.Fatalf("%d records, want %d", len(recs), per*len(snds))
	}
	next := map[any]int64{}
	for i, rec := range recs {
		if rec.Seq != int64(i) {
			t.Fatalf("record %d has sequence number %d", i, rec.Seq)
		}
		m := decodeRecord(t, rec)
		dev := m.Annotations[encoding.Symbol(telemetry.AnnDeviceID)]
		if n := m.ApplicationProperties["n"]; n != next[dev] {
			t.Fatalf("device %v: message %v stored where %d was due (order lost)", dev, n, next[dev])
		}
		next[dev]++
	}
}
