package jsregistry

import (
	"slices"
	"sync"

	"amqphub/internal/registry"
)

// change is one key's new state, from the watch or from a local write.
type change struct {
	key      string
	rev      uint64
	deleted  bool
	deviceID string
	moduleID string // "" for a device key
	dev      registry.Device
	mod      registry.Module
}

type devEntry struct {
	d   registry.Device
	rev uint64
}

type modEntry struct {
	m   registry.Module
	rev uint64
}

// cache is the node's full copy of the bucket.
//
// Ordering: the watch delivers every revision in stream order, so its
// updates never go backwards; watchRev is the newest it has delivered. A
// local write (or a fresh read made for a write) is applied at once for
// read-your-writes and remembered in pending until the watch catches up
// with it: watch updates older than a pending revision of the same key are
// dropped, so they cannot undo the local write, and the update carrying the
// pending revision itself is dropped because it is already applied (and
// already announced to OnChange listeners). pending therefore holds only
// the writes the watch has not delivered yet.
//
// Module keys of a missing device (left by a cascade that a dying node did
// not finish) stay in modules so that they can be swept, but reads treat
// them as absent.
type cache struct {
	mu       sync.RWMutex
	devices  map[string]devEntry
	ids      []string // device ids in order, for ListDevices
	loading  bool     // ids is sorted once when the initial load ends
	enabled  int
	modules  map[string]map[string]modEntry // device id → module id → module
	watchRev uint64
	pending  map[string]uint64 // key → revision of a local write not yet watched
}

func newCache() *cache {
	return &cache{
		devices: make(map[string]devEntry),
		modules: make(map[string]map[string]modEntry),
		pending: make(map[string]uint64),
		loading: true,
	}
}

// applyWatch applies an update delivered by the watch and reports whether
// it changed what readers see and must be announced.
func (c *cache) applyWatch(ch change) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.rev <= c.watchRev {
		return false // a replaced watch resending what the cache has
	}
	c.watchRev = ch.rev
	if p, ok := c.pending[ch.key]; ok {
		if ch.rev <= p {
			if ch.rev == p {
				delete(c.pending, ch.key)
			}
			return false
		}
		delete(c.pending, ch.key)
	}
	c.applyLocked(ch)
	return true
}

// applyLocal applies a state this node wrote or read from the bucket
// itself, unless the watch or another local write already applied that
// revision or a newer one. It reports whether it applied ch.
func (c *cache) applyLocal(ch change) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.rev <= c.watchRev {
		return false
	}
	if p, ok := c.pending[ch.key]; ok && p >= ch.rev {
		return false
	}
	c.pending[ch.key] = ch.rev
	c.applyLocked(ch)
	return true
}

func (c *cache) applyLocked(ch change) {
	if ch.moduleID == "" {
		old, had := c.devices[ch.deviceID]
		if had && old.d.Status == registry.StatusEnabled {
			c.enabled--
		}
		if ch.deleted {
			if had {
				delete(c.devices, ch.deviceID)
				if c.loading {
					// Unsorted until loaded; deletes are rare while loading.
					c.ids = slices.DeleteFunc(c.ids, func(id string) bool { return id == ch.deviceID })
				} else if i, found := slices.BinarySearch(c.ids, ch.deviceID); found {
					c.ids = slices.Delete(c.ids, i, i+1)
				}
			}
			return
		}
		c.devices[ch.deviceID] = devEntry{d: ch.dev, rev: ch.rev}
		if ch.dev.Status == registry.StatusEnabled {
			c.enabled++
		}
		if !had {
			if c.loading {
				c.ids = append(c.ids, ch.deviceID)
			} else {
				i, _ := slices.BinarySearch(c.ids, ch.deviceID)
				c.ids = slices.Insert(c.ids, i, ch.deviceID)
			}
		}
		return
	}
	ms := c.modules[ch.deviceID]
	if ch.deleted {
		delete(ms, ch.moduleID)
		if len(ms) == 0 {
			delete(c.modules, ch.deviceID)
		}
		return
	}
	if ms == nil {
		ms = make(map[string]modEntry)
		c.modules[ch.deviceID] = ms
	}
	ms[ch.moduleID] = modEntry{m: ch.mod, rev: ch.rev}
}

// skip records that the watch delivered rev, which could not be applied.
func (c *cache) skip(rev uint64) {
	c.mu.Lock()
	if rev > c.watchRev {
		c.watchRev = rev
	}
	c.mu.Unlock()
}

// lastRevision is the newest revision the watch delivered.
func (c *cache) lastRevision() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.watchRev
}

// loaded ends the initial load.
func (c *cache) loaded() {
	c.mu.Lock()
	defer c.mu.Unlock()
	slices.Sort(c.ids)
	c.loading = false
}

func (c *cache) device(id string) (devEntry, bool) {
	c.mu.RLock()
	e, ok := c.devices[id]
	c.mu.RUnlock()
	return e, ok
}

// module returns a module whose device exists.
func (c *cache) module(deviceID, moduleID string) (modEntry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if _, ok := c.devices[deviceID]; !ok {
		return modEntry{}, false
	}
	e, ok := c.modules[deviceID][moduleID]
	return e, ok
}

// rawModules returns the module ids stored under deviceID, whether or not
// the device exists (orphans included).
func (c *cache) rawModules(deviceID string) []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ids := make([]string, 0, len(c.modules[deviceID]))
	for id := range c.modules[deviceID] {
		ids = append(ids, id)
	}
	return ids
}

// listModules returns the modules of an existing device in id order.
func (c *cache) listModules(deviceID string) ([]registry.Module, bool) {
	c.mu.RLock()
	if _, ok := c.devices[deviceID]; !ok {
		c.mu.RUnlock()
		return nil, false
	}
	out := make([]registry.Module, 0, len(c.modules[deviceID]))
	for _, e := range c.modules[deviceID] {
		out = append(out, e.m)
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b registry.Module) int {
		switch {
		case a.ModuleID < b.ModuleID:
			return -1
		case a.ModuleID > b.ModuleID:
			return 1
		}
		return 0
	})
	return out, true
}

func (c *cache) listDevices(after string, limit int) []registry.Device {
	c.mu.RLock()
	defer c.mu.RUnlock()
	i := 0
	if after != "" {
		var found bool
		i, found = slices.BinarySearch(c.ids, after)
		if found {
			i++
		}
	}
	n := len(c.ids) - i
	if limit > 0 && n > limit {
		n = limit
	}
	out := make([]registry.Device, 0, n)
	for _, id := range c.ids[i : i+n] {
		out = append(out, c.devices[id].d.Clone())
	}
	return out
}

func (c *cache) count() (total, enabled int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.devices), c.enabled
}
