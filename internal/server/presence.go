package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"amqphub/internal/hub"
)

// clusterPresence shares every node's view of device and module
// connections (hub.Presence) through a key-value bucket, so that a REST
// read on any node reports a device connected to another one.
//
// Keys: "p.<device>.<module>.<node>" (ids as hub.SubjectToken, "_" for no
// module) hold one node's presence of one identity, written only by that
// node when it changes; "n.<node>" is the node's heartbeat, rewritten every
// heartbeat interval. A node whose heartbeat is older than stale (a node
// that died) no longer counts, so its devices read as disconnected. Every
// node follows the bucket with a watch; reads are local.
type clusterPresence struct {
	kv        jetstream.KeyValue
	node      string // token of this node's id
	heartbeat time.Duration
	stale     time.Duration
	now       func() time.Time
	log       *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[string][]byte // key -> value this node still has to write
	wake    chan struct{}
	remote  map[string]map[string]presenceRecord // identity key "<device>.<module>" -> node -> record
	beats   map[string]time.Time                 // node -> time its heartbeat was stored
}

// presenceRecord is the stored form of a hub.Presence.
type presenceRecord struct {
	Connected    bool  `json:"c"`
	Updated      int64 `json:"u"` // unix ms
	LastActivity int64 `json:"a"` // unix ms
}

const (
	presenceHeartbeat = 5 * time.Second
	presenceStale     = 15 * time.Second
)

// openClusterPresence opens (or creates) the presence bucket and starts
// following it and writing this node's heartbeat.
func openClusterPresence(ctx context.Context, c *hub.Cluster, heartbeat time.Duration, log *slog.Logger) (*clusterPresence, error) {
	name := c.Bucket("presence")
	kv, err := c.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      name,
		Description: "amqphub: device and module connections per node",
		History:     1,
		Replicas:    c.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("presence bucket %s: %w", name, err)
	}
	if heartbeat <= 0 {
		heartbeat = presenceHeartbeat
	}
	p := &clusterPresence{
		kv:        kv,
		node:      hub.SubjectToken(c.NodeID),
		heartbeat: heartbeat,
		stale:     3 * heartbeat,
		now:       time.Now,
		log:       log,
		pending:   map[string][]byte{},
		wake:      make(chan struct{}, 1),
		remote:    map[string]map[string]presenceRecord{},
		beats:     map[string]time.Time{},
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(2)
	go p.writeLoop()
	go p.watchLoop()
	return p, nil
}

// changed queues this node's new presence of an identity (hub.Config.OnPresence).
func (p *clusterPresence) changed(deviceID, moduleID string, pr hub.Presence) {
	v, _ := json.Marshal(presenceRecord{Connected: pr.Connected, Updated: pr.Updated.UnixMilli(), LastActivity: pr.LastActivity.UnixMilli()})
	p.mu.Lock()
	p.pending["p."+hub.IdentityTokens(deviceID, moduleID)+"."+p.node] = v
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes queued changes (the latest per key) and the heartbeat.
func (p *clusterPresence) writeLoop() {
	defer p.wg.Done()
	tick := time.NewTicker(p.heartbeat)
	defer tick.Stop()
	beat := true
	for {
		if beat {
			p.put("n."+p.node, []byte(fmt.Sprint(p.now().UnixMilli())))
			beat = false
		}
		p.mu.Lock()
		batch := p.pending
		p.pending = map[string][]byte{}
		p.mu.Unlock()
		for k, v := range batch {
			if !p.put(k, v) {
				// Keep it for the next round unless a newer value came.
				p.mu.Lock()
				if _, newer := p.pending[k]; !newer {
					p.pending[k] = v
				}
				p.mu.Unlock()
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		case <-tick.C:
			beat = true
		}
	}
}

func (p *clusterPresence) put(key string, v []byte) bool {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	if _, err := p.kv.Put(ctx, key, v); err != nil {
		if p.ctx.Err() == nil {
			p.log.Debug("cluster presence: write failed; retrying", "key", key, "err", err)
		}
		return false
	}
	return true
}

// watchLoop follows the bucket into remote and beats, restarting the
// watch if it ends (a NATS reconnect can end it).
func (p *clusterPresence) watchLoop() {
	defer p.wg.Done()
	for p.ctx.Err() == nil {
		w, err := p.kv.WatchAll(p.ctx)
		if err == nil {
			for e := range w.Updates() {
				if e != nil {
					p.apply(e)
				}
			}
			w.Stop()
		} else if p.ctx.Err() == nil {
			p.log.Debug("cluster presence: watch failed; retrying", "err", err)
		}
		select {
		case <-p.ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (p *clusterPresence) apply(e jetstream.KeyValueEntry) {
	parts := strings.Split(e.Key(), ".")
	deleted := e.Operation() != jetstream.KeyValuePut
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case len(parts) == 2 && parts[0] == "n":
		if deleted {
			delete(p.beats, parts[1])
		} else {
			p.beats[parts[1]] = e.Created()
		}
	case len(parts) == 4 && parts[0] == "p":
		id, node := parts[1]+"."+parts[2], parts[3]
		var r presenceRecord
		if deleted || json.Unmarshal(e.Value(), &r) != nil {
			delete(p.remote[id], node)
			return
		}
		m := p.remote[id]
		if m == nil {
			m = map[string]presenceRecord{}
			p.remote[id] = m
		}
		m[node] = r
	}
}

// merge combines this node's presence of an identity (local, ok) with
// what live other nodes reported.
func (p *clusterPresence) merge(deviceID, moduleID string, local hub.Presence, ok bool) (hub.Presence, bool) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	for node, r := range p.remote[hub.IdentityTokens(deviceID, moduleID)] {
		if node == p.node {
			continue // this node's own record: local is fresher
		}
		rp := hub.Presence{Connected: r.Connected, Updated: time.UnixMilli(r.Updated).UTC(), LastActivity: time.UnixMilli(r.LastActivity).UTC()}
		if beat, live := p.beats[node]; !live || now.Sub(beat) > p.stale {
			// The node is gone and its connections with it: they ended
			// at its last sign of life at the latest.
			if rp.Connected {
				rp.Connected = false
				if live && beat.After(rp.Updated) {
					rp.Updated = beat.UTC()
				}
			}
		}
		if !ok {
			local, ok = rp, true
			continue
		}
		// Connected anywhere is connected, since the earliest of those
		// connections; disconnected everywhere is disconnected since the
		// last of the disconnections.
		switch {
		case rp.Connected && !local.Connected:
			local.Connected, local.Updated = true, rp.Updated
		case rp.Connected && local.Connected && rp.Updated.Before(local.Updated):
			local.Updated = rp.Updated
		case !rp.Connected && !local.Connected && rp.Updated.After(local.Updated):
			local.Updated = rp.Updated
		}
		if rp.LastActivity.After(local.LastActivity) {
			local.LastActivity = rp.LastActivity
		}
	}
	return local, ok
}

// close stops the loops and withdraws this node's heartbeat, so that the
// other nodes stop counting its connections at once.
func (p *clusterPresence) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p.cancel()
	p.wg.Wait()
	if err := p.kv.Delete(ctx, "n."+p.node); err != nil {
		p.log.Debug("cluster presence: withdrawing the heartbeat failed", "err", err)
	}
	return nil
}
