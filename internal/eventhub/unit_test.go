package eventhub

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"amqphub/amqp/encoding"
	"amqphub/amqp/frames"
	"amqphub/store/partlog"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		expr string
		want startPos
		err  string
	}{
		{"", startPos{kind: posStart}, ""},
		{"   ", startPos{kind: posStart}, ""},
		{"amqp.annotation.x-opt-offset > '-1'", startPos{kind: posStart}, ""},
		{"amqp.annotation.x-opt-offset >= '-1'", startPos{kind: posStart, inclusive: true}, ""},
		{"amqp.annotation.x-opt-offset > '@latest'", startPos{kind: posLatest}, ""},
		{"amqp.annotation.x-opt-offset >= '@latest'", startPos{kind: posLatest, inclusive: true}, ""},
		{"amqp.annotation.x-opt-offset > '4096'", startPos{kind: posOffset, value: 4096}, ""},
		{"amqp.annotation.x-opt-offset>='4096'", startPos{kind: posOffset, value: 4096, inclusive: true}, ""},
		{"amqp.annotation.x-opt-sequence-number > 17", startPos{kind: posSequence, value: 17}, ""},
		{"  Amqp.Annotation.X-Opt-Sequence-Number   >=   '17'  ", startPos{kind: posSequence, value: 17, inclusive: true}, ""},
		{"amqp.annotation.x-opt-sequence-number > '-1'", startPos{kind: posSequence, value: -1}, ""},
		{"amqp.annotation.x-opt-enqueued-time > '1700000000000'", startPos{kind: posTime, value: 1700000000000}, ""},
		{"amqp.annotation.x-opt-enqueued-time >= 1700000000000", startPos{kind: posTime, value: 1700000000000, inclusive: true}, ""},
		{"amqp.annotation.x-opt-offset = '5'", startPos{}, "operator"},
		{"amqp.annotation.x-opt-offset < '5'", startPos{}, "operator"},
		{"amqp.annotation.x-opt-offset", startPos{}, "operator"},
		{"amqp.annotation. > '5'", startPos{}, "operator"},
		{"amqp.annotation.x-opt-publisher > '5'", startPos{}, "unknown annotation"},
		{"x-opt-offset > '5'", startPos{}, "amqp.annotation"},
		{"amqp.annotation.x-opt-offset > 'five'", startPos{}, "not an integer"},
		{"amqp.annotation.x-opt-offset > ''", startPos{}, "not an integer"},
		{"amqp.annotation.x-opt-offset > '5", startPos{}, "one number"},
		{"amqp.annotation.x-opt-offset > '5' OR 1=1", startPos{}, "one number"},
		{"amqp.annotation.x-opt-sequence-number > '99999999999999999999'", startPos{}, "not an integer"},
	}
	for _, tc := range tests {
		got, err := parseSelector(tc.expr)
		if tc.err != "" {
			if !errors.Is(err, errBadFilter) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one mentioning %q", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.expr, got, err, tc.want)
		}
	}
}

func TestSelectorOf(t *testing.T) {
	const expr = "amqp.annotation.x-opt-offset > '-1'"
	tests := []struct {
		name   string
		filter map[encoding.Symbol]any
		want   string
		bad    bool
	}{
		{"none", nil, "", false},
		{"numeric descriptor (Go, Node)", map[encoding.Symbol]any{selectorFilterName: &encoding.Described{Descriptor: selectorFilterCode, Value: expr}}, expr, false},
		{"symbolic descriptor (amqpnetlite)", map[encoding.Symbol]any{selectorFilterName: &encoding.Described{Descriptor: selectorFilterName, Value: expr}}, expr, false},
		{"other key name", map[encoding.Symbol]any{"selector": &encoding.Described{Descriptor: selectorFilterCode, Value: expr}}, expr, false},
		{"bare string under the name", map[encoding.Symbol]any{selectorFilterName: expr}, expr, false},
		{"unrelated filter", map[encoding.Symbol]any{"apache.org:legacy-amqp-direct-binding:string": &encoding.Described{Descriptor: uint64(0x468C00000000), Value: "x"}}, "", false},
		{"value not a string", map[encoding.Symbol]any{selectorFilterName: &encoding.Described{Descriptor: selectorFilterCode, Value: int64(5)}}, "", true},
		{"bare value not a string", map[encoding.Symbol]any{selectorFilterName: int64(5)}, "", true},
	}
	for _, tc := range tests {
		got, err := selectorOf(tc.filter)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
	}
}

func TestEpochOf(t *testing.T) {
	tests := []struct {
		props map[any]any
		epoch int64
		has   bool
		bad   bool
	}{
		{nil, 0, false, false},
		{map[any]any{encoding.Symbol("com.microsoft:epoch"): int64(7)}, 7, true, false},
		{map[any]any{"com.microsoft:epoch": int32(3)}, 3, true, false},
		{map[any]any{encoding.Symbol("com.microsoft:epoch"): int64(-2)}, -2, true, false},
		{map[any]any{encoding.Symbol("com.microsoft:epoch"): uint64(1 << 63)}, 0, false, true},
		{map[any]any{encoding.Symbol("com.microsoft:epoch"): "7"}, 0, false, true},
		{map[any]any{encoding.Symbol("com.microsoft:receiver-name"): "x"}, 0, false, false},
	}
	for _, tc := range tests {
		e, has, err := epochOf(tc.props)
		if e != tc.epoch || has != tc.has || (err != nil) != tc.bad {
			t.Errorf("%v: %d %v %v", tc.props, e, has, err)
		}
	}
}

// decode decodes an encoded event.
func decode(t *testing.T, b []byte) *frames.Message {
	t.Helper()
	m := &frames.Message{}
	if err := m.UnmarshalAMQP(b); err != nil {
		t.Fatalf("delivered event does not decode: %v", err)
	}
	return m
}

func TestEncodeEvent(t *testing.T) {
	entry := partlog.Entry{Seq: 42, Offset: 123456, EnqueuedTime: 1700000000123}
	enc := func(m *frames.Message) []byte {
		b, err := m.AppendAMQP(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name    string
		payload []byte
		check   func(t *testing.T, m *frames.Message)
	}{
		{"iothub annotations kept", enc(&frames.Message{
			Header:                &frames.Header{Durable: true, Priority: 4},
			Annotations:           map[any]any{encoding.Symbol("iothub-connection-device-id"): "d1", encoding.Symbol("iothub-enqueuedtime"): time.UnixMilli(5).UTC()},
			Properties:            &frames.Properties{MessageID: "m1"},
			ApplicationProperties: map[string]any{"k": "v"},
			Data:                  [][]byte{[]byte("body")},
		}), func(t *testing.T, m *frames.Message) {
			if m.Annotations[encoding.Symbol("iothub-connection-device-id")] != "d1" || m.Header == nil || !m.Header.Durable ||
				m.Properties.MessageID != "m1" || m.ApplicationProperties["k"] != "v" || string(m.Data[0]) != "body" {
				t.Errorf("sections changed: %+v", m)
			}
		}},
		{"no annotations section", enc(&frames.Message{
			Properties: &frames.Properties{MessageID: "m1"},
			Data:       [][]byte{[]byte("body")},
		}), func(t *testing.T, m *frames.Message) {
			if m.Properties.MessageID != "m1" || len(m.Annotations) != 3 {
				t.Errorf("got %+v", m)
			}
		}},
		{"stale x-opt values replaced", enc(&frames.Message{
			Annotations: map[any]any{encoding.Symbol("x-opt-sequence-number"): int64(1), encoding.Symbol("x-opt-offset"): "9", "x-opt-enqueued-time": "bad", encoding.Symbol("x-opt-partition-key"): "pk"},
			Value:       "v", HasValue: true,
		}), func(t *testing.T, m *frames.Message) {
			if len(m.Annotations) != 4 || m.Annotations[encoding.Symbol("x-opt-partition-key")] != "pk" || m.Value != "v" {
				t.Errorf("got %#v", m.Annotations)
			}
		}},
		{"empty annotations map", append(encoding.AppendNull(encoding.AppendDescriptor(nil, frames.CodeMessageAnn)), enc(&frames.Message{Data: [][]byte{[]byte("x")}})...),
			func(t *testing.T, m *frames.Message) {
				if string(m.Data[0]) != "x" {
					t.Errorf("body %q", m.Data)
				}
			}},
		{"not an AMQP message", []byte("plain text"), func(t *testing.T, m *frames.Message) {
			if len(m.Data) != 1 || string(m.Data[0]) != "plain text" {
				t.Errorf("body %q, want the raw payload as data", m.Data)
			}
		}},
		{"empty payload", nil, func(t *testing.T, m *frames.Message) {
			if len(m.Data) != 1 || len(m.Data[0]) != 0 {
				t.Errorf("body %q, want one empty data section", m.Data)
			}
		}},
	}
	var e eventEncoder
	var buf []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf = e.encode(buf[:0], partlog.Record{Entry: entry, Payload: tc.payload}, nil, time.Now())
			m := decode(t, buf)
			if m.Annotations[encoding.Symbol("x-opt-sequence-number")] != int64(42) ||
				m.Annotations[encoding.Symbol("x-opt-offset")] != "123456" ||
				m.Annotations[encoding.Symbol("x-opt-enqueued-time")] != time.UnixMilli(1700000000123).UTC() {
				t.Fatalf("x-opt annotations %#v", m.Annotations)
			}
			if m.DeliveryAnnotations != nil {
				t.Fatalf("unrequested delivery annotations %#v", m.DeliveryAnnotations)
			}
			tc.check(t, m)
		})
	}
	t.Run("runtime metric", func(t *testing.T) {
		payload := enc(&frames.Message{
			Header:              &frames.Header{Durable: true, Priority: 4},
			DeliveryAnnotations: map[any]any{encoding.Symbol("device-hop"): "x"},
			Data:                [][]byte{[]byte("b")},
		})
		info := &partlog.Info{LastSeq: 99, LastOffset: 777, LastEnqueuedTime: 1700000009999}
		now := time.UnixMilli(1700000010000)
		m := decode(t, e.encode(nil, partlog.Record{Entry: entry, Payload: payload}, info, now))
		da := m.DeliveryAnnotations
		if len(da) != 4 || da[encoding.Symbol("last_enqueued_sequence_number")] != int64(99) ||
			da[encoding.Symbol("last_enqueued_offset")] != "777" ||
			da[encoding.Symbol("last_enqueued_time_utc")] != time.UnixMilli(1700000009999).UTC() ||
			da[encoding.Symbol("runtime_info_retrieval_time_utc")] != now.UTC() {
			t.Fatalf("delivery annotations %#v", da)
		}
		if m.Header == nil || !m.Header.Durable || string(m.Data[0]) != "b" || len(m.Annotations) != 3 {
			t.Fatalf("message %+v", m)
		}
	})
}

func TestGroupStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "eventhub", "consumergroups.json")
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	s, err := openGroups(path, 3, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "B.c_d-e", "A"} {
		if _, _, err := s.create(name, now); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	if _, _, err := s.create("x", now); !errors.Is(err, ErrTooManyGroups) {
		t.Fatalf("a fourth group with a limit of 3: %v", err)
	}
	for _, bad := range []string{"", "a b", "_x", "x_", "é", strings.Repeat("a", 51), "$Other"} {
		if _, _, err := s.create(bad, now); !errors.Is(err, ErrInvalidGroupName) {
			t.Errorf("create %q: %v, want ErrInvalidGroupName", bad, err)
		}
	}
	if err := s.remove("$default"); !errors.Is(err, ErrDefaultGroupFixed) {
		t.Fatalf("remove $default: %v", err)
	}
	if err := s.remove("zzz"); !errors.Is(err, ErrGroupNotFound) {
		t.Fatalf("remove missing: %v", err)
	}
	if err := s.remove("b.C_D-E"); err != nil {
		t.Fatal(err)
	}
	// Reopen: same groups, same entity creation time.
	s2, err := openGroups(path, 3, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, g := range s2.list() {
		names = append(names, g.Name)
	}
	if strings.Join(names, ",") != "$Default,a" || !s2.createdAt().Equal(now) {
		t.Fatalf("reopened: %v created %v", names, s2.createdAt())
	}
	// A corrupt file is reported, not ignored.
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openGroups(path, 3, now); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt file: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{"consumerGroups":[{"name":"bad name"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openGroups(path, 3, now); !errors.Is(err, ErrInvalidGroupName) {
		t.Fatalf("invalid stored name: %v", err)
	}
}
