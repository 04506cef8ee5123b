package twins

import (
	"sync"
	"sync/atomic"
)

// Subscribers is the list of SubscribeDesired callbacks every Store keeps.
// It is copied on change, so announcing a change reads it without a lock.
// The zero value is ready to use.
type Subscribers struct {
	mu   sync.Mutex
	next uint64
	list atomic.Pointer[[]subscriber]
}

type subscriber struct {
	id uint64
	fn func(DesiredChange)
}

// Add registers fn until cancel is called (the Store's SubscribeDesired).
func (s *Subscribers) Add(fn func(DesiredChange)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	id := s.next
	next := append(append([]subscriber(nil), s.load()...), subscriber{id: id, fn: fn})
	s.list.Store(&next)
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		cur := s.load()
		next := make([]subscriber, 0, len(cur))
		for _, sub := range cur {
			if sub.id != id {
				next = append(next, sub)
			}
		}
		s.list.Store(&next)
	}
}

// Any reports whether anyone subscribed, so that a Store can skip
// computing a change nobody hears.
func (s *Subscribers) Any() bool { return len(s.load()) > 0 }

// Announce calls every subscriber with c.
func (s *Subscribers) Announce(c DesiredChange) {
	for _, sub := range s.load() {
		sub.fn(c)
	}
}

func (s *Subscribers) load() []subscriber {
	if p := s.list.Load(); p != nil {
		return *p
	}
	return nil
}
