// Package soak runs crash soaks against a hub child process: device
// telemetry, twin updates and registry writes while the hub is SIGKILLed at
// random moments, restarted each time on the same data directory and
// ports, and finally verified.
//
// What it proves:
//
//   - D2C: every message the hub accepted is in the telemetry log exactly
//     once; the log's partitions have continuous sequence numbers from 0;
//     each device's messages are in sending order; rejected messages are
//     not stored; nothing is stored that was never sent. Messages whose
//     outcome was lost with the hub may or may not be stored (that is
//     at-least-once delivery). The Event-Hub-compatible endpoint of the
//     final hub must deliver exactly the log's records.
//   - Twins: after every restart each twin holds at least the last
//     acknowledged update (and nothing never written); versions never go
//     back.
//   - Registry: the provisioned devices are intact (keys, status) and every
//     acknowledged device creation survives.
//   - C2D (when the hub serves it): every message the hub accepted reached
//     its device at least once or has negative feedback; no device got a
//     message that was refused, never sent, or meant for another device.
//
// A run is bounded by Config.Cycles (kills) and Config.Duration.
package soak

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"amqphub/amqp/frames"
	"amqphub/internal/auth"
	"amqphub/internal/sas"
	"amqphub/store/partlog"
	"amqphub/store/partlog/seglog"
)

// hubName is the hub (and Event Hub entity) name of soak children: the
// serve default.
const hubName = "amqphub"

// Config bounds and shapes a soak. Zero fields take the defaults given.
type Config struct {
	// Launch starts the hub; required (BinaryLauncher or SelfLauncher).
	Launch Launcher
	// DataDir is the hub's data directory; required, and should be new.
	DataDir string
	// Cycles is how many times the hub is SIGKILLed. Default 5.
	Cycles int
	// Duration bounds the whole run; once it is reached no further cycle
	// starts and the run verifies. Default 10 minutes.
	Duration time.Duration
	// MinUptime and MaxUptime bound the random time the hub runs under
	// load before each kill. Defaults 1 s and 5 s.
	MinUptime, MaxUptime time.Duration
	// Devices is the number of devices sending telemetry. Default 4.
	Devices int
	// InFlight is how many messages each device keeps awaiting their
	// outcome. Default 64.
	InFlight int
	// MessageSize is the telemetry body size in bytes. Default 256.
	MessageSize int
	// Partitions is the hub's telemetry partition count. Default 4.
	Partitions int
	// TwinInterval and RegistryInterval pace the twin PATCHes (one device
	// after another) and the device creations. Defaults 20 ms and 100 ms.
	TwinInterval, RegistryInterval time.Duration
	// C2DInterval paces the service's C2D sends; C2DLockDuration is the
	// hub's C2D lock. Defaults 5 ms and 2 s.
	C2DInterval, C2DLockDuration time.Duration
	// Seed seeds the kill moments; 0 picks one (printed in the report).
	Seed uint64
	// Progress receives a line per cycle; nil for none.
	Progress io.Writer
}

func (c *Config) defaults() error {
	if c.Launch == nil {
		return errors.New("soak: Config.Launch is required")
	}
	if c.DataDir == "" {
		return errors.New("soak: Config.DataDir is required")
	}
	setDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	setInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	setInt(&c.Cycles, 5)
	setDur(&c.Duration, 10*time.Minute)
	setDur(&c.MinUptime, time.Second)
	setDur(&c.MaxUptime, 5*time.Second)
	setInt(&c.Devices, 4)
	setInt(&c.InFlight, 64)
	setInt(&c.MessageSize, 256)
	setInt(&c.Partitions, 4)
	setDur(&c.TwinInterval, 20*time.Millisecond)
	setDur(&c.RegistryInterval, 100*time.Millisecond)
	setDur(&c.C2DInterval, 5*time.Millisecond)
	setDur(&c.C2DLockDuration, 2*time.Second)
	if c.Seed == 0 {
		var b [8]byte
		rand.Read(b[:])
		c.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
	if c.Cycles < 0 || c.Devices < 1 || c.InFlight < 1 || c.MessageSize < 0 || c.Partitions < 1 || c.Partitions > 32 {
		return errors.New("soak: cycles must be >= 0, devices and in-flight >= 1, message size >= 0, partitions 1 to 32")
	}
	if c.MinUptime < 0 || c.MaxUptime < c.MinUptime || c.Duration <= 0 {
		return errors.New("soak: uptimes must satisfy 0 <= min <= max, and the duration must be positive")
	}
	return nil
}

// Report is what a soak found.
type Report struct {
	Seed       uint64
	Cycles     int // SIGKILLs
	Starts     int // hub starts (Cycles + 1 when the run finished)
	Elapsed    time.Duration
	Reconnects int64 // device reconnections
	D2C        D2CReport
	Twin       TwinReport
	Registry   RegistryReport
	C2D        C2DReport
	// C2DStatus says whether C2D was exercised, and if not why.
	C2DStatus string
	// Problems describes the first failures; ProblemCount counts all.
	Problems     []string
	ProblemCount int
}

// RegistryReport holds the registry figures.
type RegistryReport struct {
	Provisioned int   // soak devices created at the start
	Created     int64 // further creations acknowledged under load
	Checks      int64 // device reads compared after restarts
	Missing     int64 // acknowledged devices missing after a restart
	Changed     int64 // provisioned devices whose keys or status changed
}

// OK reports whether the soak found no problem.
func (r *Report) OK() bool { return r.ProblemCount == 0 }

// Print writes the figures.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "soak: %d kills, %d hub starts in %v (seed %d)\n", r.Cycles, r.Starts, r.Elapsed.Round(time.Millisecond), r.Seed)
	d := r.D2C
	fmt.Fprintf(w, "  D2C:      %d sent, %d acknowledged, %d rejected, %d outcome unknown; %d stored (%d of them unacknowledged)\n",
		d.Sent, d.Acked, d.Rejected, d.Unknown, d.Stored, d.StoredUnacked)
	fmt.Fprintf(w, "            lost %d, duplicated %d, phantom %d, sequence gaps %d, out of order %d; device reconnections %d\n",
		d.Lost, d.Duplicated, d.Phantom, d.SeqGaps, d.OutOfOrder, r.Reconnects)
	fmt.Fprintf(w, "            Event-Hub-compatible endpoint: %d records read, %d mismatches with the log\n", d.EventHubRead, d.EventHubMismatch)
	t := r.Twin
	fmt.Fprintf(w, "  twins:    %d updates, %d acknowledged, %d checks after restarts, lost %d, bad %d\n", t.Updates, t.Acked, t.Checks, t.Lost, t.Bad)
	g := r.Registry
	fmt.Fprintf(w, "  registry: %d devices provisioned, %d created under load, %d checks after restarts, missing %d, changed %d\n",
		g.Provisioned, g.Created, g.Checks, g.Missing, g.Changed)
	c := r.C2D
	fmt.Fprintf(w, "  C2D:      %s\n", r.C2DStatus)
	if c.Sent > 0 {
		fmt.Fprintf(w, "            %d sent, %d acknowledged, %d refused (queue full); %d delivered (%d deliveries, %d redeliveries); lost %d, phantom %d\n",
			c.Sent, c.Acked, c.Rejected, c.Delivered, c.Deliveries, c.Redelivered, c.Lost, c.Phantom)
		codes := make([]string, 0, len(c.Feedback))
		for k := range c.Feedback {
			codes = append(codes, k)
		}
		sort.Strings(codes)
		fmt.Fprintf(w, "            feedback:")
		for _, k := range codes {
			fmt.Fprintf(w, " %s %d", k, c.Feedback[k])
		}
		fmt.Fprintln(w)
	}
	if r.OK() {
		fmt.Fprintln(w, "  result:   OK")
		return
	}
	fmt.Fprintf(w, "  result:   %d PROBLEMS\n", r.ProblemCount)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "    - %s\n", p)
	}
}

// run is the state of one soak.
type run struct {
	cfg        Config
	devices    []*soakDevice
	ledger     *ledger
	twins      *twinLedger
	c2d        *c2dLedger
	c2dOn      bool // the hub serves C2D
	problems   problems
	reconnects atomic.Int64
	lastErr    atomic.Value // string: the last device error, for progress

	regNext    atomic.Int64
	regMu      sync.Mutex
	regCreated map[string]string // acknowledged creations: id -> generation id

	twinReport TwinReport
	regReport  RegistryReport
}

// Run performs a soak. It returns an error when the soak cannot be carried
// out (the hub does not start, the data cannot be read); what the soak
// found is in the Report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("soak: data directory: %w", err)
	}
	addrs, err := freeAddrs(2)
	if err != nil {
		return nil, err
	}
	spec := ChildSpec{DataDir: cfg.DataDir, AMQPAddr: addrs[0], HTTPSAddr: addrs[1], Partitions: cfg.Partitions, C2DLockDuration: cfg.C2DLockDuration}
	r := &run{cfg: cfg, ledger: newLedger(), twins: newTwinLedger(), c2d: newC2DLedger(), regCreated: map[string]string{}}
	for i := 0; i < cfg.Devices; i++ {
		var k [32]byte
		rand.Read(k[:])
		r.devices = append(r.devices, &soakDevice{id: "soak-dev-" + strconv.Itoa(i), key: base64.StdEncoding.EncodeToString(k[:])})
	}
	rep := &Report{Seed: cfg.Seed}
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	rng := mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed>>1))
	var c *child
	defer func() {
		if c != nil {
			c.kill()
		}
	}()
	for cycle := 0; ; cycle++ {
		if c, err = startChild(ctx, cfg.Launch, spec); err != nil {
			return nil, err
		}
		rep.Starts++
		rc, err := newREST(spec)
		if err != nil {
			return nil, err
		}
		if cycle == 0 {
			if err := r.provision(ctx, rc); err != nil {
				return nil, err
			}
			rep.C2DStatus, r.c2dOn = probeC2D(ctx, spec)
		} else if err := r.verifyState(ctx, rc); err != nil {
			return nil, err
		}
		// Keep time for the final verification.
		if cycle == cfg.Cycles || time.Until(deadline) < cfg.MinUptime+10*time.Second || ctx.Err() != nil {
			break
		}
		up := cfg.MinUptime
		if span := cfg.MaxUptime - cfg.MinUptime; span > 0 {
			up += time.Duration(rng.Int64N(int64(span)))
		}
		up = min(up, time.Until(deadline)-10*time.Second)
		ld := r.startLoad(spec, rc)
		sleepCtx(ctx, up)
		c.kill()
		c = nil
		ld.stop()
		rep.Cycles++
		if w := cfg.Progress; w != nil {
			sent, acked, _ := r.ledger.counts()
			fmt.Fprintf(w, "soak: kill %d/%d after %v under load: %d messages sent, %d acknowledged so far\n",
				rep.Cycles, cfg.Cycles, up.Round(time.Millisecond), sent, acked)
		}
	}
	// The last hub is up with the state of every kill: let the devices
	// take what C2D still holds, read telemetry through the
	// Event-Hub-compatible endpoint, stop the hub cleanly, read the log.
	// An interrupted run still verifies what it did.
	vctx := context.WithoutCancel(ctx)
	if r.c2dOn {
		if err := r.drainC2D(vctx, spec, 2*cfg.C2DLockDuration+30*time.Second); err != nil {
			r.problems.addf("C2D: %v", err)
		}
		rep.C2D = verifyC2D(r.c2d, &r.problems)
	}
	eh, ehErr := readEventHub(vctx, spec)
	if err := c.stop(30 * time.Second); err != nil {
		c = nil
		return nil, err
	}
	c = nil
	check := newD2CCheck(r.ledger, &r.problems)
	logDigests, err := readLog(filepath.Join(cfg.DataDir, "telemetry"), check)
	if err != nil {
		return nil, err
	}
	rep.D2C = check.finish()
	if ehErr != nil {
		r.problems.addf("reading the Event-Hub-compatible endpoint: %v", ehErr)
	} else {
		rep.D2C.EventHubRead, rep.D2C.EventHubMismatch = compareDigests(logDigests, eh, &r.problems)
	}
	r.twins.mu.Lock()
	r.twinReport.Updates, r.twinReport.Acked = r.twins.updates, r.twins.ackedN
	r.twins.mu.Unlock()
	rep.Twin = r.twinReport
	r.regMu.Lock()
	r.regReport.Created = int64(len(r.regCreated))
	r.regMu.Unlock()
	rep.Registry = r.regReport
	rep.Reconnects = r.reconnects.Load()
	rep.Elapsed = time.Since(start)
	r.problems.mu.Lock()
	rep.Problems, rep.ProblemCount = r.problems.list, r.problems.total
	r.problems.mu.Unlock()
	return rep, nil
}

// provision creates the soak's devices with their keys.
func (r *run) provision(ctx context.Context, rc *restClient) error {
	for _, d := range r.devices {
		body := map[string]any{
			"deviceId": d.id,
			"status":   "enabled",
			"authentication": map[string]any{
				"type":         "sas",
				"symmetricKey": map[string]any{"primaryKey": d.key, "secondaryKey": d.key},
			},
		}
		if err := rc.do(ctx, http.MethodPut, "/devices/"+d.id, body, nil); err != nil {
			return fmt.Errorf("soak: provisioning %s: %w", d.id, err)
		}
		r.regReport.Provisioned++
	}
	return nil
}

// verifyState checks the registry and twins after a restart.
func (r *run) verifyState(ctx context.Context, rc *restClient) error {
	for _, d := range r.devices {
		var got device
		if err := rc.do(ctx, http.MethodGet, "/devices/"+d.id, nil, &got); err != nil {
			return fmt.Errorf("soak: reading device %s after a restart: %w", d.id, err)
		}
		r.regReport.Checks++
		if got.Status != "enabled" || got.Authentication.SymmetricKey.PrimaryKey != d.key || got.Authentication.SymmetricKey.SecondaryKey != d.key {
			r.regReport.Changed++
			r.problems.addf("device %s changed across a restart: status %q, keys match %v", d.id, got.Status,
				got.Authentication.SymmetricKey.PrimaryKey == d.key && got.Authentication.SymmetricKey.SecondaryKey == d.key)
		}
		var tw twin
		if err := rc.do(ctx, http.MethodGet, "/twins/"+d.id, nil, &tw); err != nil {
			return fmt.Errorf("soak: reading twin %s after a restart: %w", d.id, err)
		}
		r.twins.checkTwin(d.id, tw, &r.twinReport, &r.problems)
	}
	r.regMu.Lock()
	created := make(map[string]string, len(r.regCreated))
	for id, gen := range r.regCreated {
		created[id] = gen
	}
	r.regMu.Unlock()
	for id, gen := range created {
		var got device
		err := rc.do(ctx, http.MethodGet, "/devices/"+id, nil, &got)
		var se *statusError
		switch {
		case errors.As(err, &se) && se.status == http.StatusNotFound:
			r.regReport.Missing++
			r.problems.addf("device %s, whose creation was acknowledged, is missing after a restart", id)
		case err != nil:
			return fmt.Errorf("soak: reading device %s after a restart: %w", id, err)
		case got.GenerationID != gen:
			r.regReport.Changed++
			r.problems.addf("device %s has generation %s after a restart, %s when created", id, got.GenerationID, gen)
		}
		r.regReport.Checks++
	}
	return nil
}

// ownerConn connects to the hub as iothubowner over plain AMQP.
func ownerConn(ctx context.Context, spec ChildSpec) (*goamqp.Conn, error) {
	key, err := base64.StdEncoding.DecodeString(auth.DevIoTHubOwnerPrimaryKey)
	if err != nil {
		return nil, err
	}
	tok := sas.Sign(HostName, key, auth.PolicyIoTHubOwner, time.Now().Add(time.Hour))
	return goamqp.Dial(ctx, "amqp://"+spec.AMQPAddr, &goamqp.ConnOptions{
		SASLType: goamqp.SASLTypePlain(auth.PolicyIoTHubOwner+"@sas.root."+hubName, tok),
		HostName: HostName,
	})
}

// probeC2D tells whether the hub serves the service's C2D link.
func probeC2D(ctx context.Context, spec ChildSpec) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := ownerConn(ctx, spec)
	if err != nil {
		return "not exercised: probe failed: " + err.Error(), false
	}
	defer c.Close()
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		return "not exercised: probe failed: " + err.Error(), false
	}
	snd, err := s.NewSender(ctx, "/messages/devicebound", nil)
	if err != nil {
		var le *goamqp.LinkError
		if errors.As(err, &le) && le.RemoteErr != nil && le.RemoteErr.Condition == goamqp.ErrCondNotImplemented {
			return "not exercised: this hub does not serve C2D (/messages/devicebound is amqp:not-implemented)", false
		}
		return "not exercised: attaching /messages/devicebound failed: " + err.Error(), false
	}
	snd.Close(ctx)
	return "exercised (service sends with iothub-ack full, devices complete, feedback read)", true
}

// readEventHub reads every partition from its start through the
// Event-Hub-compatible endpoint, up to the last sequence number the
// partition reports, and returns their digests.
func readEventHub(ctx context.Context, spec ChildSpec) ([]partDigest, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c, err := ownerConn(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	s, err := c.NewSession(ctx, nil)
	if err != nil {
		return nil, err
	}
	out := make([]partDigest, spec.Partitions)
	for p := 0; p < spec.Partitions; p++ {
		last, err := lastSeq(ctx, s, p)
		if err != nil {
			return nil, fmt.Errorf("partition %d properties: %w", p, err)
		}
		if last < 0 {
			continue
		}
		rcv, err := s.NewReceiver(ctx, fmt.Sprintf("%s/ConsumerGroups/$Default/Partitions/%d", hubName, p), &goamqp.ReceiverOptions{
			Credit: 1000, SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr(),
		})
		if err != nil {
			return nil, fmt.Errorf("partition %d reader: %w", p, err)
		}
		for {
			m, err := rcv.Receive(ctx, nil)
			if err != nil {
				return nil, fmt.Errorf("partition %d: %w", p, err)
			}
			seq, _ := m.Annotations["x-opt-sequence-number"].(int64)
			id := ""
			if m.Properties != nil {
				id, _ = m.Properties.MessageID.(string)
			}
			out[p].add(seq, id)
			if seq >= last {
				break
			}
		}
		rcv.Close(ctx)
	}
	return out, nil
}

// lastSeq asks $management for a partition's last sequence number.
func lastSeq(ctx context.Context, s *goamqp.Session, p int) (int64, error) {
	snd, err := s.NewSender(ctx, "$management", nil)
	if err != nil {
		return 0, err
	}
	defer snd.Close(ctx)
	reply := fmt.Sprintf("soak-mgmt-%d", p)
	rcv, err := s.NewReceiver(ctx, "$management", &goamqp.ReceiverOptions{TargetAddress: reply, SettlementMode: goamqp.ReceiverSettleModeFirst.Ptr()})
	if err != nil {
		return 0, err
	}
	defer rcv.Close(ctx)
	err = snd.Send(ctx, &goamqp.Message{
		Properties: &goamqp.MessageProperties{MessageID: reply, ReplyTo: &reply},
		ApplicationProperties: map[string]any{
			"operation": "READ", "type": "com.microsoft:partition", "name": hubName, "partition": strconv.Itoa(p),
		},
	}, nil)
	if err != nil {
		return 0, err
	}
	m, err := rcv.Receive(ctx, nil)
	if err != nil {
		return 0, err
	}
	body, _ := m.Value.(map[string]any)
	last, ok := body["last_enqueued_sequence_number"].(int64)
	if !ok {
		return 0, fmt.Errorf("no last_enqueued_sequence_number in %v (status %v)", m.Value, m.ApplicationProperties["status-code"])
	}
	return last, nil
}

// readLog streams every record of the telemetry log in dir through check
// and returns the partitions' digests.
func readLog(dir string, check *d2cCheck) ([]partDigest, error) {
	lg, err := seglog.Open(dir, seglog.Options{})
	if err != nil {
		return nil, fmt.Errorf("soak: open the telemetry log: %w", err)
	}
	defer lg.Close()
	out := make([]partDigest, lg.Partitions())
	var recs []partlog.Record
	for p := range out {
		var next int64
		for {
			recs, err = lg.Read(p, next, 1000, 0, recs[:0])
			if err != nil {
				return nil, fmt.Errorf("soak: read partition %d: %w", p, err)
			}
			if len(recs) == 0 {
				break
			}
			for _, rec := range recs {
				var m frames.Message
				if err := m.UnmarshalAMQP(rec.Payload); err != nil {
					return nil, fmt.Errorf("soak: partition %d record %d does not decode: %w", p, rec.Seq, err)
				}
				id := ""
				if m.Properties != nil {
					id, _ = m.Properties.MessageID.(string)
				}
				check.add(p, rec.Seq, id)
				out[p].add(rec.Seq, id)
				next = rec.Seq + 1
			}
		}
	}
	return out, nil
}
