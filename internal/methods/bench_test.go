package methods_test

import (
	"context"
	"testing"

	goamqp "github.com/Azure/go-amqp"
)

// BenchmarkInvoke is a whole direct-method call: HTTPS POST, request to
// the device over AMQP, the device's echo, HTTP response.
func BenchmarkInvoke(b *testing.B) {
	s := startHub(b, nil)
	svc := owner(b, s)
	dev := openMethods(b, dialIdentity(b, s, "d1", ""), "/devices/d1/methods/devicebound")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			m, err := dev.rcv.Receive(ctx, nil)
			if err != nil {
				return
			}
			dev.rcv.AcceptMessage(ctx, m)
			resp := &goamqp.Message{
				Properties:            &goamqp.MessageProperties{CorrelationID: m.Properties.CorrelationID},
				ApplicationProperties: map[string]any{"IoThub-status": int32(200)},
				Data:                  m.Data,
			}
			if err := dev.snd.Send(ctx, resp, nil); err != nil {
				return
			}
		}
	}()
	req := map[string]any{"methodName": "echo", "payload": map[string]any{"n": 1}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if code, body, _ := svc.Do("POST", "/twins/d1/methods", req); code != 200 {
			b.Fatalf("invoke: %d %v", code, body)
		}
	}
}
