package registry

import "sync"

// cache is a bounded read cache of device and module records.
//
// Consistency: writers update the database first and then the cache while
// holding the device's stripe lock, and every writer bumps epoch. A reader
// that missed notes the epoch before reading the database and only fills
// the cache if no write happened since, so a slow reader can never put back
// a value older than one a writer already cached. Eviction is random (Go
// map order), which is cheap and good enough for a working set that is
// mostly "devices that connect".
type cache struct {
	mu      sync.RWMutex
	max     int // entries; < 0 disables the cache
	epoch   uint64
	devices map[string]Device
	modules map[string]map[string]Module // deviceID → moduleID → module
	nmod    int
}

func newCache(max int) *cache {
	return &cache{
		max:     max,
		devices: make(map[string]Device),
		modules: make(map[string]map[string]Module),
	}
}

func (c *cache) device(id string) (Device, bool) {
	c.mu.RLock()
	d, ok := c.devices[id]
	c.mu.RUnlock()
	return d, ok
}

func (c *cache) module(deviceID, moduleID string) (Module, bool) {
	c.mu.RLock()
	m, ok := c.modules[deviceID][moduleID]
	c.mu.RUnlock()
	return m, ok
}

func (c *cache) epochNow() uint64 {
	c.mu.RLock()
	e := c.epoch
	c.mu.RUnlock()
	return e
}

// makeRoom evicts one entry if the cache is full. c.mu must be held.
func (c *cache) makeRoom() {
	if len(c.devices)+c.nmod < c.max {
		return
	}
	for id := range c.devices {
		delete(c.devices, id)
		return
	}
	for id, ms := range c.modules {
		c.nmod -= len(ms)
		delete(c.modules, id)
		return
	}
}

func (c *cache) fillDevice(epoch uint64, d Device) {
	if c.max < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	if _, ok := c.devices[d.DeviceID]; !ok {
		c.makeRoom()
	}
	c.devices[d.DeviceID] = d
}

func (c *cache) setDevice(d Device) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if c.max < 0 {
		return
	}
	if _, ok := c.devices[d.DeviceID]; !ok {
		c.makeRoom()
	}
	c.devices[d.DeviceID] = d
}

func (c *cache) deleteDevice(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	delete(c.devices, id)
	c.nmod -= len(c.modules[id])
	delete(c.modules, id)
}

func (c *cache) putModuleLocked(m Module) {
	ms := c.modules[m.DeviceID]
	if _, ok := ms[m.ModuleID]; !ok {
		c.makeRoom()
		ms = c.modules[m.DeviceID] // makeRoom may have dropped it
		if ms == nil {
			ms = make(map[string]Module)
			c.modules[m.DeviceID] = ms
		}
		c.nmod++
	}
	ms[m.ModuleID] = m
}

func (c *cache) fillModule(epoch uint64, m Module) {
	if c.max < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if epoch != c.epoch {
		return
	}
	c.putModuleLocked(m)
}

func (c *cache) setModule(m Module) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if c.max < 0 {
		return
	}
	c.putModuleLocked(m)
}

func (c *cache) deleteModule(deviceID, moduleID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if ms, ok := c.modules[deviceID]; ok {
		if _, ok := ms[moduleID]; ok {
			delete(ms, moduleID)
			c.nmod--
		}
		if len(ms) == 0 {
			delete(c.modules, deviceID)
		}
	}
}
