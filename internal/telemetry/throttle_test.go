package telemetry_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/internal/hub"
	"amqphub/internal/server"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog/seglog"
)

// batchMessage is a batch (format 0x80013700) of n small messages.
func batchMessage(t *testing.T, n int) *goamqp.Message {
	t.Helper()
	var inner [][]byte
	for i := range n {
		b, err := (&goamqp.Message{Data: [][]byte{{byte(i)}}}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		inner = append(inner, b)
	}
	return &goamqp.Message{Format: frames.MessageFormatBatch, Data: inner}
}

// sendCount sends n messages with receipts and counts accepted ones and
// ones rejected with the throttling condition; any other outcome fails.
func sendCount(t *testing.T, snd *goamqp.Sender, n int) (accepted, throttled int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	receipts := make([]goamqp.SendReceipt, 0, n)
	for i := 0; i < n; i++ {
		r, err := snd.SendWithReceipt(ctx, goamqp.NewMessage(fmt.Appendf(nil, "m%d", i)), nil)
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		receipts = append(receipts, r)
	}
	for i, r := range receipts {
		st, err := r.Wait(ctx)
		if err != nil {
			t.Fatalf("receipt %d: %v", i, err)
		}
		switch st := st.(type) {
		case *goamqp.StateAccepted:
			accepted++
		case *goamqp.StateRejected:
			if st.Error == nil || st.Error.Condition != goamqp.ErrCond(telemetry.ErrCondThrottled) {
				t.Fatalf("message %d rejected with %v, want %s", i, st.Error, telemetry.ErrCondThrottled)
			}
			throttled++
		default:
			t.Fatalf("message %d settled with %T", i, st)
		}
	}
	return accepted, throttled
}

// The rates below are so low that no token comes back during a test:
// admissions are exactly the bursts.
const slowRate = 0.001

func TestThrottlePerDevice(t *testing.T) {
	s := startHub(t, func(o *server.Options) {
		o.Telemetry.Throttle = telemetry.ThrottleConfig{DeviceRate: slowRate, DeviceBurst: 5}
	})
	noisy := deviceSender(t, s, "d1", "", nil)
	acc, thr := sendCount(t, noisy, 20)
	if acc != 5 || thr != 15 {
		t.Fatalf("noisy device: %d accepted, %d throttled; want 5 and 15", acc, thr)
	}
	// The same device on a second connection shares its allowance.
	again := deviceSender(t, s, "d1", "", nil)
	if acc, _ := sendCount(t, again, 3); acc != 0 {
		t.Fatalf("noisy device's second connection: %d accepted, want 0", acc)
	}
	// Its module counts against the device too.
	mod := deviceSender(t, s, "d1", "m1", nil)
	if acc, _ := sendCount(t, mod, 2); acc != 0 {
		t.Fatalf("noisy device's module: %d accepted, want 0", acc)
	}
	// Another device is not starved.
	quiet := deviceSender(t, s, "d2", "", nil)
	if acc, thr := sendCount(t, quiet, 5); acc != 5 || thr != 0 {
		t.Fatalf("quiet device: %d accepted, %d throttled; want 5 and 0", acc, thr)
	}
	// Throttled messages were not stored.
	p1 := telemetry.Partition("d1", testPartitions)
	got := 0
	for _, rec := range readAll(t, s.Log, p1) {
		if decodeRecord(t, rec).Annotations[encoding.Symbol(telemetry.AnnDeviceID)] == "d1" {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("%d records of d1 stored, want the 5 accepted", got)
	}
}

func TestThrottlePerConnection(t *testing.T) {
	s := startHub(t, func(o *server.Options) {
		o.Telemetry.Throttle = telemetry.ThrottleConfig{ConnectionRate: slowRate, ConnectionBurst: 4}
	})
	// One connection carrying two devices (a policy with DeviceConnect).
	user, token := ownerLogin(t, s)
	c := dial(t, s.AMQPAddr, user, token)
	a := openSender(t, c, "/devices/d1/messages/events", nil)
	b := openSender(t, c, "/devices/d2/messages/events", nil)
	accA, _ := sendCount(t, a, 3)
	accB, thrB := sendCount(t, b, 3)
	if accA != 3 || accB != 1 || thrB != 2 {
		t.Fatalf("shared connection: d1 %d accepted, d2 %d accepted / %d throttled; want 3, 1, 2", accA, accB, thrB)
	}
	// A device on its own connection is unaffected.
	own := deviceSender(t, s, "d3", "", nil)
	if acc, _ := sendCount(t, own, 4); acc != 4 {
		t.Fatalf("other connection: %d accepted, want 4", acc)
	}
}

// TestThrottleBatchCountsMessages: each message of a batch costs a token.
func TestThrottleBatchCountsMessages(t *testing.T) {
	s := startHub(t, func(o *server.Options) {
		o.Telemetry.Throttle = telemetry.ThrottleConfig{DeviceRate: slowRate, DeviceBurst: 10}
	})
	snd := deviceSender(t, s, "d1", "", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A batch of 8 fits the burst of 10; the next batch of 8 does not.
	for i, want := range []bool{true, false} {
		r, err := snd.SendWithReceipt(ctx, batchMessage(t, 8), nil)
		if err != nil {
			t.Fatal(err)
		}
		st, err := r.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := st.(*goamqp.StateAccepted)
		if ok != want {
			t.Fatalf("batch %d: outcome %T %v, want accepted=%v", i, st, st, want)
		}
	}
}

func TestThrottleConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  telemetry.ThrottleConfig
		ok   bool
	}{
		{"off", telemetry.ThrottleConfig{}, true},
		{"device", telemetry.ThrottleConfig{DeviceRate: 100, DeviceBurst: 10}, true},
		{"connection", telemetry.ThrottleConfig{ConnectionRate: 100}, true},
		{"negative rate", telemetry.ThrottleConfig{DeviceRate: -1}, false},
		{"negative burst", telemetry.ThrottleConfig{ConnectionRate: 1, ConnectionBurst: -2}, false},
		{"burst without rate", telemetry.ThrottleConfig{DeviceBurst: 10}, false},
		{"connection burst without rate", telemetry.ThrottleConfig{DeviceRate: 1, ConnectionBurst: 10}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lg, err := seglog.Open(t.TempDir(), seglog.Options{Partitions: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer lg.Close()
			_, err = telemetry.Setup(&hub.Env{Log: lg}, telemetry.Config{Throttle: tc.cfg})
			if (err == nil) != tc.ok {
				t.Fatalf("Setup: %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
