// Package jsc2d is the C2D queue and feedback store of a hub cluster: the
// c2d.Store state machine (see package c2d for the rules) kept in NATS
// JetStream, so that any node can serve any device or service and the
// lock, settlement, delivery-count, expiry and feedback rules hold
// whichever node an operation reaches.
//
// # Layout
//
// A key-value bucket (Options.Bucket, history 1) holds one key per queue,
// "q.<base64url(queue id)>" (the encoding of hub.SubjectToken: queue ids
// contain '/' and other characters keys forbid). Its value is the whole
// queue except the bodies: the sequence counters, the pending messages'
// headers (sequence, body reference, message/device/generation ids, ack
// mode, enqueued and expiry times, delivery count, lock token and
// locked-until), the queue's pending feedback records with their batch
// locks, and the last 32 lock tokens that were lost rather than settled.
// MaxDepth (50) bounds the headers; feedback records are bounded by
// Options.MaxValueBytes (oldest dropped with a warning beyond it).
//
// Bodies (up to 64 KiB in IoT Hub) go to a stream of their own,
// Bucket+"_bodies", one message per body; a header names its body by
// stream sequence. Enqueue stores the body first, then the header; a
// settled message's body is deleted by sequence after the header write
// (no delete markers accumulate). Bodies no header names (an Enqueue that
// failed after its body, a failed deletion) are removed by the sweeper
// once they are ten minutes old.
//
// # Operations
//
// Every change is read, compute, compare-and-swap: the queue value is taken
// from the node-local cache (or read when unknown), the same rules as the
// Pebble store are applied to a copy (lazy TTL expiry first), and the
// result is written with kv.Update on the revision it was computed from.
// On a conflict the value is read again and the computation redone
// (bounded). Operations of one node on one queue are serialised by a local
// mutex, so conflicts only arise between nodes. The depth limit is checked
// inside the computation, so it holds under any concurrency.
//
// Times come from Config.Now and are stored as timestamps; lock, message
// and feedback expiries are evaluated by the store from them, never by
// JetStream timers, so a manual clock drives every rule.
//
// A lock token is 16 random bytes stored in the header. A settlement finds
// its token in the queue value on every node: a token the cached value
// does not know is looked up again with a fresh read before the answer is
// ErrNotFound, and the retired-token list makes ErrLockLost the same on
// every node (bounded: after 32 newer lost locks of the queue an old token
// turns into ErrNotFound, as the Pebble store's ring does).
//
// # Feedback
//
// A feedback record is written into the queue value by the same CAS as
// the state change that produced it, so a crash can neither lose nor
// invent one. Records are ordered across queues by the revision of the
// write that added them (a record is written with revision 0 and stamped
// by the next write of its key, which knows that revision), which is the
// order JetStream committed them. TakeFeedback picks the oldest available
// records from the cache and locks them with one CAS per queue, storing
// the batch token, its locked-until and the node id in each record, so
// another node's TakeFeedback skips them while the lock holds. A batch is
// settled on the node that took it (its service link is there; elsewhere
// the token is ErrNotFound). When a store opens with a NodeID, the batches
// an earlier process with that id held are released, since their link died
// with it; a node that comes back under a new id (the hub's default is a
// random one) leaves its old batches locked until FeedbackLockDuration
// passes, after which they are handed out again.
//
// # Cache and watches
//
// Each node follows the bucket's "q.>" keys with a KV watcher into a cache
// of every queue value (one entry per queue ever used: a few hundred bytes
// for an idle queue). Pending, Generations, PendingFeedback,
// AvailableFeedback, Lock's search and Sweep's search are local reads.
// Watch and WatchFeedback are node-local and fed by the watcher and by the
// node's own writes, so an Enqueue on node B signals a Watch on node A as
// soon as A's watcher delivers it. A watch is signalled at registration
// when a message is available, and on every update that leaves one
// available, so no wake-up is lost.
// A lock expiry signals through a timer armed at the stored locked-until
// of a watched queue (with ManualSweep, Sweep signals instead). A value
// just written by another node may be seen a moment late: Lock can then
// answer "none", and the watch signal follows. Every two seconds a node
// compares the bucket's last sequence with the last revision its watcher
// delivered; a watcher stalled at two checks in a row (its consumer lost
// with a server restart or a failed node) is restarted, which replays
// every current value into the cache and signals the watches concerned,
// so wake-ups missed during an outage arrive a few seconds after it.
//
// # Sweeping
//
// Sweep may run on any node at any time (its writes are CAS updates). It
// finds due queues in the cache, so a sweep with nothing due sends nothing
// over the network. With ManualSweep false, every node runs a background
// loop each SweepInterval; only the holder of a lease key ("lease.sweep",
// wall-clock expiry, renewed by CAS) writes expiries and removes orphan
// bodies, so nodes do not race over the same queues; every node signals
// its own watchers.
//
// # Durability and failures
//
// An operation returns after JetStream acknowledged its write, which means
// stored by a quorum of Options.Replicas. Every NATS request is bounded by
// Options.Timeout, so with NATS unreachable calls fail with a wrapped
// context.DeadlineExceeded instead of hanging (Lock of a queue the cache
// holds nothing for answers "none" without a request).
//
// Cost: every change rewrites the queue value (a few KiB with 50 messages)
// and every node decodes every change of every queue; a queue with a very
// long feedback backlog makes its value large. Values are JSON.
package jsc2d
