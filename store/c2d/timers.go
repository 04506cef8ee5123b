package c2d

import (
	"container/heap"
	"time"
)

// timerKind says what a deadline is for.
type timerKind uint8

const (
	timerMsgExpiry timerKind = iota // message TTL: dead-letter (Expired)
	timerMsgLock                    // message lock: available again, signal watchers
	timerFbExpiry                   // feedback TTL: drop the record
	timerFbLock                     // feedback batch lock: records available again
)

// timer is one deadline. It is embedded in the object it belongs to, so that
// removing the object removes its deadline in O(log n) and the heap never
// holds stale entries (a completed message must not linger until its TTL).
type timer struct {
	at   time.Time
	kind timerKind
	idx  int // position in the heap, -1 when not scheduled
	m    *msg
	fr   *fbRecord
	fb   *fbBatch
}

type timerHeap []*timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}

func (h *timerHeap) Push(x any) {
	t := x.(*timer)
	t.idx = len(*h)
	*h = append(*h, t)
}

func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.idx = -1
	return t
}

// schedule sets t to fire at at and reports whether it became the earliest.
func (h *timerHeap) schedule(t *timer, at time.Time) bool {
	t.at = at
	if t.idx >= 0 {
		heap.Fix(h, t.idx)
	} else {
		heap.Push(h, t)
	}
	return t.idx == 0
}

func (h *timerHeap) unschedule(t *timer) {
	if t.idx >= 0 {
		heap.Remove(h, t.idx)
	}
}

// popDue removes and returns the earliest timer if it is due at now.
func (h *timerHeap) popDue(now time.Time) *timer {
	if len(*h) == 0 || now.Before((*h)[0].at) {
		return nil
	}
	return heap.Pop(h).(*timer)
}
