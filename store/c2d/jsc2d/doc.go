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
// A body of at most Options.InlineBodyBytes (1 KiB) is kept in its header,
// in the queue value: that saves three JetStream requests per message
// (store, read, delete) at the price of rewriting the body with its queue.
// Larger bodies (up to 64 KiB in IoT Hub) go to a stream of their own,
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
// (bounded). Operations of one node on one queue go through that queue's
// committer (group commit): while a write of the queue is in flight, the
// operations that arrive wait, and the next write applies all of them, in
// arrival order, each seeing the previous ones' result, with one CAS. So
// conflicts only arise between nodes, and a device settling 30 messages at
// once costs about one write, not 30 in a row. The depth limit is checked
// inside the computation, so it holds under any concurrency. Every
// operation, Lock and TakeFeedback included, returns after its write: an
// answer given before it could be overturned by another node's write,
// and two nodes would hand out the same message.
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
// order JetStream committed them. TakeFeedback picks available records
// from the cache queue by queue (the queue with the oldest record first,
// all of a queue's available records together, so that a batch touches
// few queues) and locks them with one CAS per queue, all queues at once,
// storing
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
// Cost: every change rewrites the queue value (a few KiB with 50 messages,
// more with inline bodies) and every node decodes every change of every
// queue made by another node (its own writes it already holds); a queue
// with a very long feedback backlog makes its value large. Values are a
// compact binary form (codec.go); JSON values of earlier versions are
// still read, but nodes of earlier versions cannot read the binary form,
// so a cluster is upgraded all at once.
//
// # Performance
//
// Measured with bench/cluster.sh on a 2-core VM (3 nats-server processes,
// R3, two hub nodes, load on node A; 64 devices, 256-byte messages,
// 32 in flight per device, full feedback):
//
//	DURATION=10s bench/cluster.sh c2d
//
//	                         msgs/s   round trip p50   to device p50
//	before (3aacb1e)            367         13083 ms          321 ms
//	after (2f492ba)            3061           526 ms           94 ms
//	embedded Pebble, same run 10940            26 ms           16 ms
//
// At an offered rate (same cluster, bench c2d --connections 64 --rate R
// --duration 10s against node A), the round trip is in tens of
// milliseconds; most of it is the feedback link gathering a batch:
//
//	--rate 1000                 909            48 ms          6.6 ms
//	--rate 2000                1814            60 ms           19 ms
//
// What it took: group commit per queue; feedback batches locked and
// settled on all their queues at once, taken queue by queue; small bodies
// inline; binary values; a node's own writes not decoded again. Profile
// before: hub CPU 0.47 cores, mostly JSON decoding, and the feedback link
// locking 64 queues one after the other, each behind its queue's backlog.
//
// What bounds it now: each queue is a chain of writes, one in flight at a
// time, and the hub calls Enqueue (per service link) and Lock (per device
// link) one after the other per queue, so a queue takes about one message
// per two write round trips (10-15 ms each on a loaded 2-core machine).
// The feedback link takes 64 records per TakeFeedback, which waits for
// one or two writes of the queues it touches (20-28 ms), so under this
// unbounded closed-loop load feedback runs at about the rate messages come
// in and the backlog built while the load ramps up stays: the round trip's
// p50 is that backlog's age, not a write's latency.
package jsc2d
