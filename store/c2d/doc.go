// Package c2d is the durable store behind IoT Hub's cloud-to-device (C2D)
// messaging: per-device FIFO queues whose messages a device locks and
// settles, and the feedback records the hub batches back to the service.
//
// The hub owns the protocol; this package owns the state machine and its
// durability. A queue is named by an opaque id the hub chooses (for example
// "dev1" or "dev1/modules/m1"). Message bodies are opaque bytes.
//
// # Message life cycle (IoT Hub semantics)
//
//	Enqueue ──► enqueued ──Lock──► locked ──Complete──► removed (feedback Success)
//	              ▲                  │ ├──Reject────► dead-lettered (Rejected)
//	              │                  │ ├──Abandon───► enqueued, DeliveryCount+1;
//	              │                  │ │              at MaxDeliveryCount dead-lettered
//	              │                  │ │              (DeliveryCountExceeded)
//	              └──lock expiry─────┘ └──(no count increase: IoT Hub's rule)
//	enqueued or locked past ExpiresAt ─► dead-lettered (Expired)
//	Purge ─► every pending message dead-lettered (Purged)
//	DeleteQueue ─► messages and the queue's pending feedback dropped, no feedback
//
// Dead-lettered messages are removed: IoT Hub keeps no dead-letter queue.
// A feedback record is written in the same atomic commit as the state change
// that produced it, when the message's ack mode asks for it (Success for
// positive/full, every other status for negative/full).
//
// # Lock tokens
//
// Settling with the token of the current, unexpired lock succeeds. A token
// whose lock expired, or that was replaced by a newer lock, or whose message
// expired or was purged while it was held, gives ErrLockLost. A token the
// store does not know (never issued, already settled, queue deleted, or
// belonging to another queue) gives ErrNotFound. Replaced tokens are
// remembered in a bounded in-memory ring, so after a restart or a very long
// time a replaced token can turn from ErrLockLost into ErrNotFound.
//
// # Restart
//
// Everything committed survives Close and reopen: queued messages, their
// delivery counts, their locks (a message locked before the restart stays
// locked, with the same token, until its lock expires) and pending feedback.
// Feedback batch locks are not kept: a batch handed out before the restart
// is available again afterwards, because the service link that would have
// settled it died with the process.
//
// # Durability and group commit
//
// Enqueue, Complete, Abandon, Reject, Purge, DeleteQueue, CompleteFeedback,
// AbandonFeedback and Sweep return only after their change is fsynced. All
// concurrent operations are gathered by a single committer into one Pebble
// batch and one synced commit, so thousands of devices share one fsync.
// Lock and TakeFeedback do not wait for their write: a lock that is lost in a
// crash only makes the message available earlier, which the at-least-once
// contract already allows.
//
// # Disk full
//
// While the free space of the store's directory is below its reserve
// (PebbleOptions.DiskGuard), every operation that may write (all of the
// above, Lock, TakeFeedback, Release, DropGenerations) fails with an error
// wrapping pebbleutil.ErrNoSpace before it changes anything; reads (Pending,
// PendingFeedback, AvailableFeedback, Generations, Watch) go on, and the
// sweeper retries its expiries every second. Writes resume by themselves
// when space returns. Refusing up front keeps Pebble from ever hitting a
// full disk in its WAL, which it cannot survive.
package c2d
