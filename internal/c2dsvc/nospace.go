package c2dsvc

import (
	"time"

	"amqphub/amqp"
)

// A full disk (the store's writes refused with pebbleutil.ErrNoSpace) is
// an outage of the hub, not of a client: the store's guard logs it once
// when it begins and once when it ends, so the service does not log each
// refusal. Clients learn it as amqp:internal-error with a description
// naming the cause, which the SDKs retry:
//
//   - a service send is rejected with it;
//   - a device's (or the feedback receiver's) outcome cannot be refused,
//     as the engine has already settled it, so the link is detached with
//     it instead; the message (or batch) comes again when its lock expires;
//   - links stop getting deliveries (locking writes) and resume by
//     themselves, polling every spaceRetry, when space returns.

// spaceRetry is how often a delivery loop tries again while the store
// refuses writes for lack of disk space.
const spaceRetry = time.Second

// noSpaceError is the error a client gets when what it asked for could not
// be stored because the hub's disk is full.
func noSpaceError(what string) *amqp.Error {
	return amqp.NewError(amqp.ErrCondInternalError,
		what+": the hub is out of disk space (insufficient disk space); retry later")
}

// waitForSpace waits spaceRetry before a delivery loop tries the store
// again; it reports false when the link or the service ends first.
func (s *Service) waitForSpace(l *amqp.Link) bool {
	t := time.NewTimer(spaceRetry)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.Done():
		return false
	case <-s.ctx.Done():
		return false
	}
}
