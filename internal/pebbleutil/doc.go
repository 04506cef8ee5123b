// Package pebbleutil holds what the hub's Pebble stores (registry, twins,
// C2D queues) share: the adapter that sends Pebble's log lines to slog, and
// the free-space guard that keeps Pebble away from a full disk.
//
// Why a guard: Pebble treats a failed WAL write as fatal. Its commit
// pipeline cannot go on after one, so it calls Logger.Fatalf, which must
// not return, and the process ends. The only way to survive a full disk is
// never to let a write reach Pebble without room for it: each store asks
// its Guard before every write and refuses the write with ErrNoSpace while
// the free space of its directory is below a reserve. Reads go on. Writes
// resume by themselves at the first check after space returns.
package pebbleutil
