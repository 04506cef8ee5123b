package client

import (
	"context"
	"math/rand/v2"
	"time"
)

// RetryOptions say how an operation that failed with a retryable error
// (a lost connection, throttling, a server timeout) is tried again. Each
// retry first reconnects if the connection is gone. Errors that cannot
// heal (bad credentials, unknown device, message too large) are returned
// at once.
type RetryOptions struct {
	// MaxRetries bounds the retries of one call: 0 retries until the
	// call's context ends, a negative value never retries.
	MaxRetries int
	// MinDelay is the wait before the first retry (default 100 ms); it
	// doubles with each retry up to MaxDelay (default 10 s), with jitter.
	MinDelay time.Duration
	MaxDelay time.Duration
}

func (r RetryOptions) withDefaults() RetryOptions {
	if r.MinDelay <= 0 {
		r.MinDelay = 100 * time.Millisecond
	}
	if r.MaxDelay <= 0 {
		r.MaxDelay = 10 * time.Second
	}
	if r.MaxDelay < r.MinDelay {
		r.MaxDelay = r.MinDelay
	}
	return r
}

// delay is the wait before retry n (0-based): exponential, capped, and
// spread over [d/2, d] so that many clients cut off together do not
// reconnect in lockstep.
func (r RetryOptions) delay(n int) time.Duration {
	d := r.MinDelay
	for i := 0; i < n && d < r.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, r.MaxDelay)
	half := d / 2
	return half + rand.N(half+1)
}

// allows reports whether retry n (0-based) may happen.
func (r RetryOptions) allows(n int) bool {
	return r.MaxRetries == 0 || (r.MaxRetries > 0 && n < r.MaxRetries)
}

// sleep waits d or until ctx or stop ends; it reports whether the wait
// ran its course.
func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}
