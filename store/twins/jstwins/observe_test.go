package jstwins

import (
	"encoding/json"
	"hash/maphash"
	"log/slog"
	"testing"

	"amqphub/store/twins"
)

// event is a value a node learns of: a twin with the given desired state
// and stored patch at a revision (deleted: a delete marker).
type event struct {
	rev      uint64
	deleted  bool
	initial  bool // delivered before Open returned: never announced
	gen      string
	dver     int64
	desired  string
	patchVer int64
	patch    string
	want     string // the announced change as JSON; "" for none
}

func TestObserveAnnouncements(t *testing.T) {
	tests := []struct {
		name   string
		events []event
	}{
		{"consecutive versions announce the stored patches", []event{
			{rev: 1, gen: "g", dver: 2, desired: `{"a":1}`, patchVer: 2, patch: `{"a":1}`, want: `{"v":2,"p":{"a":1}}`},
			{rev: 2, gen: "g", dver: 3, desired: `{"b":2}`, patchVer: 3, patch: `{"a":null,"b":2,"gone":null}`, want: `{"v":3,"p":{"a":null,"b":2,"gone":null}}`},
		}},
		{"a reported-only write announces nothing", []event{
			{rev: 1, gen: "g", dver: 2, desired: `{"a":1}`, patchVer: 2, patch: `{"a":1}`, want: `{"v":2,"p":{"a":1}}`},
			{rev: 2, gen: "g", dver: 2, desired: `{"a":1}`, patchVer: 2, patch: `{"a":1}`},
		}},
		{"missed versions announce the difference", []event{
			{rev: 1, gen: "g", dver: 2, desired: `{"a":1,"b":{"c":1,"d":2}}`, patchVer: 2, patch: `{"a":1,"b":{"c":1,"d":2}}`, want: `{"v":2,"p":{"a":1,"b":{"c":1,"d":2}}}`},
			{rev: 7, gen: "g", dver: 5, desired: `{"a":1,"b":{"c":3},"e":[1]}`, patchVer: 5, patch: `{"e":[1]}`, want: `{"v":5,"p":{"b":{"c":3,"d":null},"e":[1]}}`},
		}},
		{"older revisions are ignored", []event{
			{rev: 5, gen: "g", dver: 4, desired: `{"x":4}`, patchVer: 4, patch: `{"x":4}`, want: `{"v":4,"p":{"x":4}}`},
			{rev: 4, gen: "g", dver: 3, desired: `{"x":3}`, patchVer: 3, patch: `{"x":3}`},
			{rev: 5, gen: "g", dver: 4, desired: `{"x":4}`, patchVer: 4, patch: `{"x":4}`},
		}},
		{"values loaded at open are not announced but are the base of the next", []event{
			{rev: 3, initial: true, gen: "g", dver: 3, desired: `{"k":1,"j":1}`, patchVer: 3, patch: `{"j":1}`},
			{rev: 4, gen: "g", dver: 4, desired: `{"k":2,"j":1}`, patchVer: 4, patch: `{"k":2}`, want: `{"v":4,"p":{"k":2}}`},
			{rev: 9, gen: "g", dver: 6, desired: `{"j":1}`, patchVer: 6, patch: `{"q":null}`, want: `{"v":6,"p":{"k":null}}`},
		}},
		{"a new generation starts from an empty twin", []event{
			{rev: 1, gen: "g1", dver: 5, desired: `{"old":1}`, patchVer: 5, patch: `{"old":1}`, want: `{"g":"g1","v":5,"p":{"old":1}}`},
			{rev: 2, gen: "g2", dver: 2, desired: `{"new":1}`, patchVer: 2, patch: `{"new":1}`, want: `{"g":"g2","v":2,"p":{"new":1}}`},
			{rev: 3, gen: "g3", dver: 3, desired: `{"x":1,"y":2}`, patchVer: 3, patch: `{"y":2}`, want: `{"g":"g3","v":3,"p":{"x":1,"y":2}}`},
		}},
		{"a twin written again after a deletion is new", []event{
			{rev: 1, gen: "g", dver: 3, desired: `{"a":1}`, patchVer: 3, patch: `{"a":1}`, want: `{"v":3,"p":{"a":1}}`},
			{rev: 2, deleted: true},
			{rev: 3, gen: "g", dver: 2, desired: `{"b":1}`, patchVer: 2, patch: `{"b":1}`, want: `{"v":2,"p":{"b":1}}`},
		}},
	}
	id := twins.ID{DeviceID: "d", ModuleID: "m"}
	key := keyOf(id)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Store{log: slog.Default(), seed: maphash.MakeSeed()}
			for i := range s.shards {
				s.shards[i].m = map[string]*entry{}
			}
			var got []twins.DesiredChange
			defer s.SubscribeDesired(func(c twins.DesiredChange) { got = append(got, c) })()
			for i, ev := range tc.events {
				got = got[:0]
				var val []byte
				if !ev.deleted {
					tw := twins.NewTwin(id, ev.gen)
					tw.Desired.Version = ev.dver
					tw.Desired.Values = parse(t, ev.desired)
					var err error
					if val, err = encodeValue(tw, ev.patchVer, []byte(ev.patch)); err != nil {
						t.Fatal(err)
					}
				}
				s.observe(key, id, ev.rev, val, nil, !ev.initial)
				var want []string
				if ev.want != "" {
					var m map[string]any
					if err := json.Unmarshal([]byte(ev.want), &m); err != nil {
						t.Fatal(err)
					}
					b, err := json.Marshal(m)
					if err != nil {
						t.Fatal(err)
					}
					want = []string{string(b)}
				}
				var have []string
				for _, c := range got {
					if c.ID != id {
						t.Errorf("event %d: announced for %v", i, c.ID)
					}
					m := map[string]any{"v": c.Version, "p": c.Patch}
					if c.Generation != "g" {
						m["g"] = c.Generation
					}
					b, err := json.Marshal(m)
					if err != nil {
						t.Fatal(err)
					}
					have = append(have, string(b))
				}
				if g, w := jsonString(t, have), jsonString(t, want); g != w {
					t.Errorf("event %d announced %s, want %s", i, g, w)
				}
			}
		})
	}
}

func parse(t *testing.T, s string) map[string]any {
	t.Helper()
	m, err := twins.ParseObject([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func jsonString(t *testing.T, v []string) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKeys(t *testing.T) {
	tests := []twins.ID{
		{DeviceID: "d"},
		{DeviceID: "d", ModuleID: "m"},
		{DeviceID: "a.b*c>d e/f", ModuleID: "$edgeAgent"},
		{DeviceID: "日本", ModuleID: "ü.ö"},
	}
	for _, id := range tests {
		key := keyOf(id)
		got, err := idOf(key)
		if err != nil || got != id {
			t.Errorf("idOf(keyOf(%q)) = %q, %v", id, got, err)
		}
		for _, r := range key {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
				t.Errorf("key %q of %q contains %q", key, id, r)
			}
		}
	}
	for _, bad := range []string{"x.ZA", "t.", "t.!!", "t.ZA.", "t.ZA.$$"} {
		if _, err := idOf(bad); err == nil {
			t.Errorf("idOf(%q) accepted", bad)
		}
	}
}
