package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

type recordHandler struct{ recs []string }

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	msg := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "rejected" {
			msg += fmt.Sprintf(" rejected=%v", a.Value)
		}
		return true
	})
	h.recs = append(h.recs, msg)
	return nil
}

func TestOutageLogging(t *testing.T) {
	enospc := fmt.Errorf("write segment: %w", syscall.ENOSPC)
	eio := fmt.Errorf("sync: %w", syscall.EIO)
	const (
		failed    = "ERROR telemetry: appending to the log failed"
		keeps     = "ERROR telemetry: appending to the log keeps failing"
		recovered = "INFO telemetry: appends to the log succeed again"
	)
	// Steps: "q" queues a delivery (its number is the count so far),
	// "f" fails one with enospc, "F" with eio, "o<n>" completes delivery n,
	// "+<d>" advances the clock.
	tests := []struct {
		name  string
		steps string
		want  []string
	}{
		{"one outage", "q f q o2", []string{failed, recovered + " rejected=1"}},
		{"old successes do not end it", "q q q f o1 o2 o3 q o4", []string{failed, recovered + " rejected=1"}},
		{"many failures, one line", "q f f f f q o2", []string{failed, recovered + " rejected=4"}},
		{"a flapping disk is one outage", "q f q o2 f f q o3 f q o4", []string{failed, recovered + " rejected=1"}},
		{"another cause is another outage", "q f q o2 F q o3", []string{failed, recovered + " rejected=1", failed, recovered + " rejected=1"}},
		{"the same cause a while later is another outage", "q f q o2 +2m f q o3", []string{failed, recovered + " rejected=1", failed, recovered + " rejected=1"}},
		{"a quiet outage that lasts is logged", "q f q o2 f +2m f q o3", []string{failed, recovered + " rejected=1", keeps, recovered + " rejected=2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &recordHandler{}
			now := time.Unix(1700000000, 0)
			in := &ingest{logger: slog.New(h), now: func() time.Time { return now }}
			for _, st := range strings.Fields(tc.steps) {
				switch {
				case st == "q":
					in.submits.Add(1)
				case st == "f":
					in.appendFailed(enospc)
				case st == "F":
					in.appendFailed(eio)
				case st[0] == 'o':
					var n uint64
					fmt.Sscan(st[1:], &n)
					if in.failing.Load() {
						in.appendRecovered(n)
					}
				case st[0] == '+':
					d, err := time.ParseDuration(st[1:])
					if err != nil {
						t.Fatal(err)
					}
					now = now.Add(d)
				}
			}
			// Each record as its kind, plus the rejected count it reports.
			var got []string
			for _, r := range h.recs {
				for _, w := range []string{failed, keeps, recovered} {
					if strings.HasPrefix(r, w) {
						kind := w
						if _, n, ok := strings.Cut(r, " rejected="); ok {
							kind += " rejected=" + n
						}
						got = append(got, kind)
					}
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("logged\n  %q\nwant\n  %q", got, tc.want)
			}
		})
	}
	if !sameCause(rootCause(enospc), rootCause(fmt.Errorf("other: %w", syscall.ENOSPC))) || sameCause(rootCause(enospc), rootCause(eio)) {
		t.Fatal("root causes compared wrongly")
	}
}
