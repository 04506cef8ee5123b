package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Report is the result of one scenario run. Fields that do not apply to
// the scenario are zero and left out of the JSON.
type Report struct {
	Scenario    string    `json:"scenario"`
	Target      string    `json:"target"`
	Client      string    `json:"client,omitempty"`
	Started     time.Time `json:"started"`
	Connections int       `json:"connections,omitempty"`
	MessageSize int       `json:"message_size,omitempty"`
	// Rate is the offered rate in messages/s; 0 means unbounded (as fast
	// as acknowledgements allow, InFlight per connection).
	Rate     float64 `json:"rate,omitempty"`
	InFlight int     `json:"in_flight,omitempty"`
	TLS      bool    `json:"tls"`
	// Seconds is the measured time: from the first send to the last
	// outcome (d2c, e2e, c2d) or of the read (read).
	Seconds float64 `json:"seconds,omitempty"`

	Sent     int64 `json:"sent,omitempty"`
	Accepted int64 `json:"accepted,omitempty"`
	Rejected int64 `json:"rejected,omitempty"`
	// Failed counts messages whose outcome never came (link or
	// connection errors, or still unacknowledged when the run ended).
	Failed   int64 `json:"failed,omitempty"`
	Received int64 `json:"received,omitempty"`
	// Feedback counts feedback records received (c2d).
	Feedback int64 `json:"feedback,omitempty"`

	MsgsPerSec float64 `json:"msgs_per_sec,omitempty"`
	// FillPerSec is the rate the read scenario filled its partition at.
	FillPerSec float64 `json:"fill_msgs_per_sec,omitempty"`
	MBPerSec   float64 `json:"mb_per_sec,omitempty"`
	// Latency is the acknowledgement latency (d2c), the send-to-receive
	// latency (e2e) or the round trip (c2d). At a fixed rate it is taken
	// from each message's intended send time, so a stalled server shows
	// in it instead of silently lowering the offered load.
	Latency *Latency `json:"latency,omitempty"`
	// DeliveryLatency is the time from a cloud-to-device send to the
	// device (c2d).
	DeliveryLatency *Latency `json:"delivery_latency,omitempty"`
	// AckLatency is the devices' acknowledgement latency (e2e).
	AckLatency *Latency `json:"ack_latency,omitempty"`
	// Duplicates counts messages the consumer saw more than once (e2e).
	Duplicates int64 `json:"duplicates,omitempty"`

	// HubCores and LoadgenCores are the CPU cores the hub process (when
	// Target.HubPID is known) and the load generator used on average
	// while the load ran. With an in-process hub LoadgenCores counts both.
	HubCores     float64 `json:"hub_cpu_cores,omitempty"`
	LoadgenCores float64 `json:"loadgen_cpu_cores,omitempty"`

	// Connections scenario.
	Opened       int     `json:"opened,omitempty"`
	OpenPerSec   float64 `json:"open_per_sec,omitempty"`
	HubMemory    string  `json:"hub_memory_source,omitempty"`
	HubBaseline  int64   `json:"hub_baseline_bytes,omitempty"`
	HubLoaded    int64   `json:"hub_loaded_bytes,omitempty"`
	BytesPerConn float64 `json:"hub_bytes_per_connection,omitempty"`
	// HeapPerConn and StackPerConn split the growth into the hub's live Go
	// heap and goroutine stacks (ConnectionsConfig.Breakdown).
	HeapPerConn    float64  `json:"hub_heap_bytes_per_connection,omitempty"`
	StackPerConn   float64  `json:"hub_stack_bytes_per_connection,omitempty"`
	ConnectLatency *Latency `json:"connect_latency,omitempty"`

	// LoadAverage is the machine's 1-minute load average when the report
	// was made: on a shared machine it says how much else was running.
	LoadAverage string `json:"load_average,omitempty"`

	// Errors holds the first few distinct errors seen.
	Errors []string `json:"errors,omitempty"`
}

// WriteJSON writes r as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes r for people.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "  %s\t%s\n", k, fmt.Sprintf(format, args...)) }
	fmt.Fprintf(tw, "%s against %s\n", r.Scenario, r.Target)
	if r.Client != "" {
		row("client", "%s", r.Client)
	}
	if r.Connections > 0 {
		row("connections", "%d (TLS %v)", r.Connections, r.TLS)
	}
	if r.MessageSize > 0 {
		row("message size", "%d bytes", r.MessageSize)
	}
	if r.Scenario != "connections" && r.Scenario != "read" {
		if r.Rate > 0 {
			row("offered rate", "%.0f msgs/s", r.Rate)
		} else if r.InFlight > 0 {
			row("offered rate", "unbounded, %d in flight per connection", r.InFlight)
		}
	}
	if r.Seconds > 0 {
		row("measured", "%.2f s", r.Seconds)
	}
	if r.Sent > 0 || r.Accepted > 0 {
		row("sent", "%d", r.Sent)
		row("accepted", "%d", r.Accepted)
	}
	if r.Rejected > 0 {
		row("rejected", "%d", r.Rejected)
	}
	if r.Failed > 0 {
		row("failed", "%d", r.Failed)
	}
	if r.Received > 0 {
		row("received", "%d", r.Received)
	}
	if r.Feedback > 0 {
		row("feedback", "%d", r.Feedback)
	}
	if r.MsgsPerSec > 0 {
		row("throughput", "%.0f msgs/s, %.2f MB/s", r.MsgsPerSec, r.MBPerSec)
	}
	if r.FillPerSec > 0 {
		row("fill", "%.0f msgs/s", r.FillPerSec)
	}
	if l := r.Latency; l != nil {
		row(latencyLabel(r.Scenario), "%s", l)
	}
	if r.HubCores > 0 {
		perMsg := ""
		if n := max(r.Accepted, r.Received, r.Feedback); r.Scenario != "connections" && n > 0 && r.Seconds > 0 {
			if r.Scenario == "read" {
				n = r.Received
			}
			perMsg = fmt.Sprintf(" (hub %.2f µs of CPU per message)", r.HubCores*r.Seconds/float64(n)*1e6)
		}
		row("cpu", "hub %.2f cores, load generator %.2f cores%s", r.HubCores, r.LoadgenCores, perMsg)
	} else if r.LoadgenCores > 0 {
		row("cpu", "%.2f cores (this process)", r.LoadgenCores)
	}
	if l := r.DeliveryLatency; l != nil {
		row("to device", "%s", l)
	}
	if l := r.AckLatency; l != nil {
		row("ack latency", "%s", l)
	}
	if r.Duplicates > 0 {
		row("duplicates", "%d", r.Duplicates)
	}
	if r.Opened > 0 {
		row("opened", "%d connections, %.0f/s", r.Opened, r.OpenPerSec)
	}
	if l := r.ConnectLatency; l != nil {
		row("connect latency", "%s", l)
	}
	if r.HubMemory != "" {
		row("hub memory", "%s: %.1f MiB before, %.1f MiB with the connections open", r.HubMemory, mib(r.HubBaseline), mib(r.HubLoaded))
		row("per connection", "%.1f KiB", r.BytesPerConn/1024)
	}
	if r.HeapPerConn != 0 || r.StackPerConn != 0 {
		row("of which", "%.1f KiB live Go heap, %.1f KiB goroutine stacks", r.HeapPerConn/1024, r.StackPerConn/1024)
	}
	if r.LoadAverage != "" {
		row("load average", "%s", r.LoadAverage)
	}
	for _, e := range r.Errors {
		row("error", "%s", e)
	}
	return tw.Flush()
}

// LoadAverage describes how busy the machine was when the report was
// made: /proc/loadavg's 1-, 5- and 15-minute figures and, where the
// kernel has pressure stall information, the share of the last 10 s in
// which some task waited for a CPU. "" where neither exists.
func LoadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	out := strings.Join(f[:3], " ")
	if p, err := os.ReadFile("/proc/pressure/cpu"); err == nil {
		// "some avg10=89.52 avg60=..." on the first line.
		for _, field := range strings.Fields(string(p)) {
			if v, ok := strings.CutPrefix(field, "avg10="); ok {
				out += ", CPU pressure " + v + "%"
				break
			}
		}
	}
	return out
}

func latencyLabel(scenario string) string {
	switch scenario {
	case "d2c":
		return "ack latency"
	case "e2e":
		return "send→receive"
	case "c2d":
		return "round trip"
	}
	return "latency"
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// String formats the percentiles on one line.
func (l *Latency) String() string {
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (mean %s, n=%d)",
		fmtMs(l.P50Ms), fmtMs(l.P90Ms), fmtMs(l.P99Ms), fmtMs(l.P999Ms), fmtMs(l.MaxMs), fmtMs(l.MeanMs), l.Count)
}

func fmtMs(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.3f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

// errorSet keeps the first few distinct error messages of a run; safe
// for concurrent use.
type errorSet struct {
	mu   sync.Mutex
	list []string
}

func (e *errorSet) add(err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.list) >= 5 || slices.Contains(e.list, msg) {
		return
	}
	e.list = append(e.list, msg)
}

func (e *errorSet) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}
