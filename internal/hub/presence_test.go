package hub

import (
	"testing"
	"time"

	"amqphub/internal/auth"
)

func TestPresenceTable(t *testing.T) {
	now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	var changes int
	tab := newPresenceTable(func() time.Time { return now }, func(string, string, Presence) { changes++ })
	dev := auth.Identity{Kind: auth.KindDevice, DeviceID: "d1"}
	mod := auth.Identity{Kind: auth.KindModule, DeviceID: "d1", ModuleID: "m1"}
	policy := auth.Identity{Kind: auth.KindPolicy, PolicyName: "service"}
	tick := func() { now = now.Add(time.Second) }

	steps := []struct {
		name      string
		id        auth.Identity
		delta     int
		connected bool
		updated   int // seconds after the start
	}{
		{"first connection", dev, 1, true, 1},
		{"second connection", dev, 1, true, 1},
		{"renewal", dev, 0, true, 1},
		{"one of two closes", dev, -1, true, 1},
		{"the last closes", dev, -1, false, 5},
		{"a stray close", dev, -1, false, 5},
		{"connects again", dev, 1, true, 7},
	}
	for _, st := range steps {
		tick()
		tab.change(st.id, st.delta)
		p, ok := tab.get("d1", "")
		if !ok || p.Connected != st.connected || !p.Updated.Equal(time.Date(2026, 11, 28, 10, 0, st.updated, 0, time.UTC)) || !p.LastActivity.Equal(now) {
			t.Fatalf("%s: %+v (ok %v)", st.name, p, ok)
		}
	}
	if _, ok := tab.get("d1", "m1"); ok {
		t.Fatal("the module never connected but has a presence")
	}
	tab.change(mod, 1)
	if p, ok := tab.get("d1", "m1"); !ok || !p.Connected {
		t.Fatalf("module: %+v", p)
	}
	tab.change(policy, 1)
	if len(tab.m) != 2 {
		t.Fatalf("policies are not devices: %d entries", len(tab.m))
	}
	if changes != len(steps)+1 {
		t.Fatalf("%d changes announced, want %d", changes, len(steps)+1)
	}
}
