package telemetry

import (
	"errors"
	"time"
)

// A log outage (disk full, write errors) is logged once when it begins and
// once when it ends, however the outcomes of queued deliveries interleave:
//
//   - Deliveries queued before the outage began keep completing for a
//     while, some successfully (an earlier batch, another partition): such
//     a success says nothing about the log now, so only the success of a
//     delivery queued after the outage began ends it.
//   - A disk at the edge of full flaps: a small write fits, the next batch
//     does not. An outage with the same root cause (errors.Unwrap to the
//     end, e.g. ENOSPC) beginning within outageFlap of the last one's end
//     is the same outage going on: it is not logged again (nor its end)
//     unless it lasts longer than outageFlap.

// outageFlap is how long after an outage ended a failure with the same
// cause counts as the same outage.
const outageFlap = time.Minute

// outageState describes the current or last outage.
type outageState struct {
	cause  error     // root cause of the last logged outage
	ended  time.Time // when the last outage ended
	began  time.Time // when the current outage began
	logged bool      // the current outage was logged
}

func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

func sameCause(a, b error) bool {
	return a != nil && b != nil && (a == b || a.Error() == b.Error())
}

// appendFailed counts a delivery rejected for a log failure and logs the
// start of an outage.
func (in *ingest) appendFailed(err error) {
	in.rejected.Add(1)
	o := &in.outage
	if in.failing.Load() {
		// A quiet (flapping) outage that goes on is logged after all.
		in.outageMu.Lock()
		if in.failing.Load() && !o.logged && in.now().Sub(o.began) > outageFlap {
			o.logged, o.cause = true, rootCause(err)
			in.logger.Error("telemetry: appending to the log keeps failing; rejecting telemetry with amqp:internal-error until it recovers", "err", err, "since", o.began)
		}
		in.outageMu.Unlock()
		return
	}
	in.outageMu.Lock()
	defer in.outageMu.Unlock()
	if in.failing.Load() {
		return
	}
	now := in.now()
	in.outageFrom.Store(in.submits.Load())
	in.failing.Store(true)
	o.began = now
	root := rootCause(err)
	if sameCause(root, o.cause) && now.Sub(o.ended) < outageFlap {
		o.logged = false
		return
	}
	o.logged, o.cause = true, root
	in.logger.Error("telemetry: appending to the log failed; rejecting telemetry with amqp:internal-error until it recovers", "err", err)
}

// appendRecovered ends the outage if the delivery numbered seq, now
// durable, was queued after it began.
func (in *ingest) appendRecovered(seq uint64) {
	if seq <= in.outageFrom.Load() {
		return
	}
	in.outageMu.Lock()
	defer in.outageMu.Unlock()
	if !in.failing.Load() || seq <= in.outageFrom.Load() {
		return
	}
	in.failing.Store(false)
	o := &in.outage
	o.ended = in.now()
	if o.logged {
		in.logger.Info("telemetry: appends to the log succeed again", "rejected", in.rejected.Swap(0))
	}
}
