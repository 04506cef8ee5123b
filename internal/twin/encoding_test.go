package twin

import (
	"encoding/json"
	"testing"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/store/twins"
)

// TestMessageEncoding decodes what the hub puts on the wire and checks the
// AMQP types the SDKs insist on: annotation keys are symbols, status an
// int, version a long, the correlation-id keeps its type, bodies are data
// sections.
func TestMessageEncoding(t *testing.T) {
	push, err := pushMessage(twins.DesiredChange{Version: 7, Patch: map[string]any{"a": nil, "b": json.Number("1")}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		m       *frames.Message
		corr    any
		status  any
		version any
		body    string
	}{
		{"GET response", responseMessage("c1", reply{status: 200, body: []byte(`{"desired":{}}`)}), "c1", int32(200), nil, `{"desired":{}}`},
		{"PATCH response", responseMessage(encoding.UUID{1}, reply{status: 204, version: 12}), encoding.UUID{1}, int32(204), int64(12), ""},
		{"ulong correlation", responseMessage(uint64(9), reply{status: 200}), uint64(9), int32(200), nil, ""},
		{"error", responseMessage("e", errorReply(400, 400004, "bad")), "e", int32(400), nil, `{"errorCode":400004,"message":"bad"}`},
		{"push", push, nil, nil, int64(7), `{"$version":7,"a":null,"b":1}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := tc.m.AppendAMQP(nil)
			if err != nil {
				t.Fatal(err)
			}
			var got frames.Message
			if err := got.UnmarshalAMQP(raw); err != nil {
				t.Fatal(err)
			}
			for k := range got.Annotations {
				if _, ok := k.(encoding.Symbol); !ok {
					t.Errorf("annotation key %#v is a %T, want a symbol", k, k)
				}
			}
			if v := got.Annotations[encoding.Symbol("status")]; v != tc.status {
				t.Errorf("status %#v (%T), want %#v (%T)", v, v, tc.status, tc.status)
			}
			if v := got.Annotations[encoding.Symbol("version")]; v != tc.version {
				t.Errorf("version %#v (%T), want %#v (%T)", v, v, tc.version, tc.version)
			}
			var corr any
			if got.Properties != nil {
				corr = got.Properties.CorrelationID
			}
			if corr != tc.corr {
				t.Errorf("correlation-id %#v (%T), want %#v (%T)", corr, corr, tc.corr, tc.corr)
			}
			if tc.body == "" {
				if len(got.Data) != 0 || got.HasValue {
					t.Errorf("unexpected body %q", got.Data)
				}
				return
			}
			if len(got.Data) != 1 || string(got.Data[0]) != tc.body {
				t.Errorf("body %q, want one data section %s", got.Data, tc.body)
			}
		})
	}
}
