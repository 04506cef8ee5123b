package jsregistry

import (
	"amqphub/internal/jskv"
	"amqphub/internal/registry"
)

// casLoop is the compare-and-set retry every write to an existing device
// or module key goes through. It starts from the cached state, which may
// lag behind other nodes: a missing key or an etag that ifMatch refuses is
// confirmed with a fresh read before missing or mismatch is returned, and a
// write that loses a race re-reads, re-checks ifMatch and tries again.
//
// load returns the key's state (from the cache, or from the bucket when
// fresh) with its etag and revision; ok is false when it does not exist.
// write tries the change at rev: err is returned as it is (the change
// itself was refused), kvErr is the bucket's answer, a conflict meaning
// another writer won.
func casLoop[T any](op, ifMatch string,
	load func(fresh bool) (cur T, etag string, rev uint64, ok bool, err error),
	missing, mismatch func() error,
	write func(cur T, rev uint64) (kvErr, err error),
) error {
	cur, etag, rev, ok, _ := load(false)
	fresh := false
	for attempt := 0; ; attempt++ {
		if !ok || !registry.ETagMatches(ifMatch, etag) {
			if fresh {
				if !ok {
					return missing()
				}
				return mismatch()
			}
		} else {
			kvErr, err := write(cur, rev)
			if err != nil {
				return err
			}
			if kvErr == nil {
				return nil
			}
			if !jskv.IsConflict(kvErr) {
				return unavailable(op, kvErr)
			}
			if attempt >= maxAttempts {
				return unavailable(op, errTooManyConflicts)
			}
		}
		var err error
		if cur, etag, rev, ok, err = load(true); err != nil {
			return unavailable(op, err)
		}
		fresh = true
	}
}
