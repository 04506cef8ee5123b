package loadgen

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: latencies are recorded in microseconds from 1 µs to
// 5 minutes with 3 significant digits (0.1% resolution). Larger values are
// clamped to the top, so a stalled run still counts every message.
const (
	histMinUS  = 1
	histMaxUS  = int64(5 * time.Minute / time.Microsecond)
	histDigits = 3
)

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p99_9_ms"`
	MaxMs  float64 `json:"max_ms"`
}

// recorder is an HDR histogram safe for concurrent use. Each worker owns
// one, so the lock is uncontended except when progress reads it.
type recorder struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newRecorder() *recorder {
	return &recorder{h: hdrhistogram.New(histMinUS, histMaxUS, histDigits)}
}

// record adds one latency; negative values (clock steps) count as 0.
func (r *recorder) record(d time.Duration) {
	us := int64(d / time.Microsecond)
	us = min(max(us, histMinUS), histMaxUS)
	r.mu.Lock()
	r.h.RecordValue(us) // cannot fail: us is within the bounds
	r.mu.Unlock()
}

// mergeInto adds r's values to dst.
func (r *recorder) mergeInto(dst *hdrhistogram.Histogram) {
	r.mu.Lock()
	dst.Merge(r.h)
	r.mu.Unlock()
}

// merged returns one histogram holding the values of every recorder.
func merged(rs []*recorder) *hdrhistogram.Histogram {
	h := hdrhistogram.New(histMinUS, histMaxUS, histDigits)
	for _, r := range rs {
		r.mergeInto(h)
	}
	return h
}

// summarize turns a histogram into a Latency (nil when it is empty).
func summarize(h *hdrhistogram.Histogram) *Latency {
	if h.TotalCount() == 0 {
		return nil
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return &Latency{
		Count:  h.TotalCount(),
		MeanMs: h.Mean() / 1000,
		P50Ms:  ms(h.ValueAtQuantile(50)),
		P90Ms:  ms(h.ValueAtQuantile(90)),
		P99Ms:  ms(h.ValueAtQuantile(99)),
		P999Ms: ms(h.ValueAtQuantile(99.9)),
		MaxMs:  ms(h.Max()),
	}
}
