package amqp

// lockSend takes the link's send lock. A blocking Send waits for it; a
// TrySend must not, because a Send holding it may be waiting for credit
// that only the reader goroutine (where TrySend is typically called) can
// deliver: TrySend then reports ErrNoCredit at once, which is true for it,
// as the waiting Send is first in line for the next credit.
func (l *Link) lockSend(wait bool) bool {
	if wait {
		l.sendMu.Lock()
		return true
	}
	return l.sendMu.TryLock()
}
