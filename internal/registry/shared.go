package registry

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"
)

// This file exports the rules every Store implementation shares, so that a
// Store outside this package (jsregistry) validates, generates etags and
// generation ids, and matches If-Match exactly as PebbleStore does.

// ErrUnavailable means the store's backend (for example the NATS cluster)
// could not be reached or did not answer in time; the call may succeed
// when retried. The REST layer should answer 503.
var ErrUnavailable = errors.New("registry backend unavailable")

// ETagMatches reports whether an If-Match value (quoted or not, W/ or not,
// "" and "*" matching anything) accepts the current etag.
func ETagMatches(ifMatch, current string) bool { return etagMatches(ifMatch, current) }

// PrepareDevice validates and canonicalises the caller-settable fields of
// d, generating missing SAS keys or keeping those of keep (the replaced
// device's authentication, nil on create). Service-set fields are left for
// the store to fill.
func PrepareDevice(d Device, keep *Authentication) (Device, error) { return prepareDevice(d, keep) }

// PrepareModule is PrepareDevice for modules.
func PrepareModule(m Module, keep *Authentication) (Module, error) { return prepareModule(m, keep) }

// PrepareReplacement is PrepareDevice for a replace of cur: it also carries
// over the fields the service keeps (generation id, connection state,
// activity, C2D count, status time unless the status changes). The etag is
// left for the store.
func PrepareReplacement(d, cur Device) (Device, error) { return prepareReplacement(d, cur) }

// PrepareModuleReplacement is PrepareReplacement for modules.
func PrepareModuleReplacement(m, cur Module) (Module, error) {
	return prepareModuleReplacement(m, cur)
}

// NewETag returns a fresh opaque etag in IoT Hub's style.
func NewETag() (string, error) { return newETag() }

// RegenerateKeys returns a with the key selected by which replaced or the
// two keys swapped; only SAS authentication has keys to regenerate.
func RegenerateKeys(a Authentication, which KeyKind) (Authentication, error) {
	return regenerate(a, which)
}

// Clone returns a copy of d that shares no memory with it.
func (d Device) Clone() Device { return d.clone() }

var lastGeneration atomic.Int64

// NewGenerationID returns a generation id in IoT Hub's style (.NET ticks,
// decimal), strictly increasing within this process, so that a device
// re-created here never gets its predecessor's generation. Ids made by
// different processes are unique as long as their clocks differ by more
// than the time between a delete and a re-create.
func NewGenerationID(now time.Time) string {
	const unixEpochTicks = 621355968000000000
	t := now.UnixNano()/100 + unixEpochTicks
	for {
		last := lastGeneration.Load()
		if t <= last {
			t = last + 1
		}
		if lastGeneration.CompareAndSwap(last, t) {
			return strconv.FormatInt(t, 10)
		}
	}
}
