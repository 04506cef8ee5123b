package jsregistry

import (
	"testing"

	"amqphub/internal/registry"
)

// TestCacheOrdering checks that watch updates older than a local write do
// not undo it, and which updates are announced.
func TestCacheOrdering(t *testing.T) {
	put := func(rev uint64, reason string) change {
		return change{key: "d.ZA", rev: rev, deviceID: "d", dev: registry.Device{DeviceID: "d", StatusReason: reason, Status: registry.StatusEnabled}}
	}
	del := func(rev uint64) change { return change{key: "d.ZA", rev: rev, deviceID: "d", deleted: true} }
	type step struct {
		local    bool
		ch       change
		announce bool
		want     string // StatusReason read afterwards, "-" for missing
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"watch in order", []step{
			{false, put(1, "a"), true, "a"},
			{false, put(2, "b"), true, "b"},
			{false, del(3), true, "-"},
		}},
		{"local write then its own watch echo", []step{
			{false, put(1, "a"), true, "a"},
			{true, put(5, "local"), true, "local"},
			{false, put(3, "older"), false, "local"},
			{false, put(5, "local"), false, "local"},
			{false, put(6, "newer"), true, "newer"},
		}},
		{"local delete survives older puts", []step{
			{true, put(2, "a"), true, "a"},
			{true, del(4), true, "-"},
			{false, put(2, "a"), false, "-"},
			{false, put(3, "b"), false, "-"},
			{false, del(4), false, "-"},
			{false, put(7, "again"), true, "again"},
		}},
		{"local write older than the watch", []step{
			{false, put(9, "watched"), true, "watched"},
			{true, put(8, "late"), false, "watched"},
		}},
		{"stale local after newer local", []step{
			{true, put(10, "new"), true, "new"},
			{true, put(9, "old"), false, "new"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache()
			c.loaded()
			for i, st := range tt.steps {
				var got bool
				if st.local {
					got = c.applyLocal(st.ch)
				} else {
					got = c.applyWatch(st.ch)
				}
				if got != st.announce {
					t.Fatalf("step %d: announced %v, want %v", i, got, st.announce)
				}
				e, ok := c.device("d")
				reason := "-"
				if ok {
					reason = e.d.StatusReason
				}
				if reason != st.want {
					t.Fatalf("step %d: read %q, want %q", i, reason, st.want)
				}
				total, enabled := c.count()
				if wantN := map[bool]int{true: 1, false: 0}[ok]; total != wantN || enabled != wantN || len(c.ids) != wantN {
					t.Fatalf("step %d: count %d/%d ids %v", i, total, enabled, c.ids)
				}
			}
			if len(c.pending) != 0 && !tt.steps[len(tt.steps)-1].local {
				t.Fatalf("pending left after the watch caught up: %v", c.pending)
			}
		})
	}
}
