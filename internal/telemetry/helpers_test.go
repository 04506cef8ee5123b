package telemetry_test

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/internal/server"
	"amqphub/store/partlog"
)

const testPartitions = 4

// startHub starts an in-memory hub with devices d1 (with module m1), d2 and
// d3 whose keys the registry generates.
func startHub(t testing.TB, mod func(*server.Options)) *server.Server {
	t.Helper()
	return server.StartTest(t, func(o *server.Options) {
		o.Partitions = testPartitions
		o.Devices = []server.DeviceConfig{{ID: "d1", Modules: []string{"m1"}}, {ID: "d2"}, {ID: "d3"}}
		if mod != nil {
			mod(o)
		}
	})
}

func decodeKey(t testing.TB, b64 string) []byte {
	t.Helper()
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// deviceLogin returns the SASL PLAIN user name and a SAS token of a device
// (module "" ) or module, signed with its primary key.
func deviceLogin(t testing.TB, s *server.Server, dev, module string) (user, token string) {
	t.Helper()
	user, token, err := s.DeviceLogin(context.Background(), dev, module, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return user, token
}

// ownerLogin returns the iothubowner policy's hub-scoped login.
func ownerLogin(t testing.TB, s *server.Server) (user, token string) {
	return "iothubowner@sas.root." + s.Options.HubName,
		sas.Sign(s.Options.HostName, decodeKey(t, auth.DevIoTHubOwnerPrimaryKey), "iothubowner", time.Now().Add(time.Hour))
}

// dial opens a go-amqp connection with SASL PLAIN on the plain listener.
func dial(t testing.TB, addr, user, token string) *goamqp.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := goamqp.Dial(ctx, "amqp://"+addr, &goamqp.ConnOptions{SASLType: goamqp.SASLTypePlain(user, token), HostName: "localhost"})
	if err != nil {
		t.Fatalf("dial as %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// deviceSender dials as a device (or module) and opens its events link.
func deviceSender(t testing.TB, s *server.Server, dev, module string, opts *goamqp.SenderOptions) *goamqp.Sender {
	t.Helper()
	user, token := deviceLogin(t, s, dev, module)
	addr := "/devices/" + dev + "/messages/events"
	if module != "" {
		addr = "/devices/" + dev + "/modules/" + module + "/messages/events"
	}
	return openSender(t, dial(t, s.AMQPAddr, user, token), addr, opts)
}

func openSender(t testing.TB, c *goamqp.Conn, addr string, opts *goamqp.SenderOptions) *goamqp.Sender {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sess, err := c.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := sess.NewSender(ctx, addr, opts)
	if err != nil {
		t.Fatalf("attach %s: %v", addr, err)
	}
	return snd
}

// readAll returns every record of a partition.
func readAll(t testing.TB, lg partlog.Log, p int) []partlog.Record {
	t.Helper()
	var out []partlog.Record
	for {
		recs, err := lg.Read(p, int64(len(out)), 1000, 0, nil)
		if err != nil {
			t.Fatalf("read partition %d: %v", p, err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
	}
}

// waitRecords polls until partition p holds at least n records.
func waitRecords(t testing.TB, lg partlog.Log, p, n int) []partlog.Record {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs := readAll(t, lg, p)
		if len(recs) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition %d holds %d records, want %d", p, len(recs), n)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		lg.Wait(ctx, p, int64(len(recs))-1)
		cancel()
	}
}

func decodeRecord(t testing.TB, rec partlog.Record) *frames.Message {
	t.Helper()
	var m frames.Message
	if err := m.UnmarshalAMQP(rec.Payload); err != nil {
		t.Fatalf("record %d does not decode: %v", rec.Seq, err)
	}
	return &m
}

// condOf returns the AMQP condition of a go-amqp error.
func condOf(err error) goamqp.ErrCond {
	var ae *goamqp.Error
	if errors.As(err, &ae) {
		return ae.Condition
	}
	var le *goamqp.LinkError
	if errors.As(err, &le) && le.RemoteErr != nil {
		return le.RemoteErr.Condition
	}
	return ""
}
