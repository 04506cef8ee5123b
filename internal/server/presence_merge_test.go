package server

import (
	"testing"
	"time"

	"amqphub/internal/hub"
)

func TestPresenceMerge(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	rec := func(c bool, u, a int) presenceRecord {
		return presenceRecord{Connected: c, Updated: at(u).UnixMilli(), LastActivity: at(a).UnixMilli()}
	}
	tests := []struct {
		name   string
		local  *hub.Presence
		remote map[string]presenceRecord
		beats  map[string]int // node -> heartbeat second
		want   *hub.Presence
	}{
		{"nowhere", nil, nil, nil, nil},
		{"local only", &hub.Presence{Connected: true, Updated: at(1), LastActivity: at(2)}, nil, nil,
			&hub.Presence{Connected: true, Updated: at(1), LastActivity: at(2)}},
		{"remote only", nil, map[string]presenceRecord{"b": rec(true, 3, 4)}, map[string]int{"b": 99},
			&hub.Presence{Connected: true, Updated: at(3), LastActivity: at(4)}},
		{"connected somewhere wins", &hub.Presence{Updated: at(5), LastActivity: at(5)}, map[string]presenceRecord{"b": rec(true, 3, 4)}, map[string]int{"b": 99},
			&hub.Presence{Connected: true, Updated: at(3), LastActivity: at(5)}},
		{"connected on two: since the earlier", &hub.Presence{Connected: true, Updated: at(5), LastActivity: at(6)}, map[string]presenceRecord{"b": rec(true, 3, 4)}, map[string]int{"b": 99},
			&hub.Presence{Connected: true, Updated: at(3), LastActivity: at(6)}},
		{"gone everywhere: since the later", &hub.Presence{Updated: at(5), LastActivity: at(5)}, map[string]presenceRecord{"b": rec(false, 8, 8)}, map[string]int{"b": 99},
			&hub.Presence{Updated: at(8), LastActivity: at(8)}},
		{"dead node's connection ended at its last heartbeat", nil, map[string]presenceRecord{"b": rec(true, 3, 4)}, map[string]int{"b": 50},
			&hub.Presence{Updated: at(50), LastActivity: at(4)}},
		{"withdrawn node", nil, map[string]presenceRecord{"b": rec(true, 3, 4)}, nil,
			&hub.Presence{Updated: at(3), LastActivity: at(4)}},
		{"own record ignored", nil, map[string]presenceRecord{"self": rec(true, 3, 4)}, map[string]int{"self": 99}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &clusterPresence{node: "self", stale: 15 * time.Second, now: func() time.Time { return at(100) },
				remote: map[string]map[string]presenceRecord{}, beats: map[string]time.Time{}}
			if tt.remote != nil {
				p.remote[hub.IdentityTokens("d1", "")] = tt.remote
			}
			for n, s := range tt.beats {
				p.beats[n] = at(s)
			}
			var local hub.Presence
			if tt.local != nil {
				local = *tt.local
			}
			got, ok := p.merge("d1", "", local, tt.local != nil)
			if (tt.want == nil) != !ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tt.want != nil, got)
			}
			if ok && (got.Connected != tt.want.Connected || !got.Updated.Equal(tt.want.Updated) || !got.LastActivity.Equal(tt.want.LastActivity)) {
				t.Fatalf("got %+v, want %+v", got, *tt.want)
			}
		})
	}
}
