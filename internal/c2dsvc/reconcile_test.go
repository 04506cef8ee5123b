package c2dsvc

import (
	"context"
	"reflect"
	"testing"

	"amqphub/amqp/amqptest"
	"amqphub/internal/registry"
	"amqphub/store/c2d"
)

// TestReconcileDeletedDevices: the state of deleted devices and modules is
// dropped without feedback, that of an earlier generation of a re-created
// device too, and everything else is kept.
func TestReconcileDeletedDevices(t *testing.T) {
	ctx := context.Background()
	reg, err := registry.OpenPebble("", registry.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	st, err := c2d.OpenPebble("c2d", c2d.PebbleOptions{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	create := func(id string, modules ...string) (string, map[string]string) {
		t.Helper()
		d, err := reg.CreateDevice(ctx, registry.Device{DeviceID: id})
		if err != nil {
			t.Fatal(err)
		}
		mg := map[string]string{}
		for _, m := range modules {
			mod, err := reg.CreateModule(ctx, registry.Module{DeviceID: id, ModuleID: m})
			if err != nil {
				t.Fatal(err)
			}
			mg[m] = mod.GenerationID
		}
		return d.GenerationID, mg
	}
	enqueue := func(q, gen, id string) {
		t.Helper()
		if _, err := st.Enqueue(ctx, q, c2d.NewMessage{GenerationID: gen, MessageID: id, Ack: c2d.AckFull, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	complete := func(q string) {
		t.Helper()
		m, ok, err := st.Lock(ctx, q)
		if err != nil || !ok {
			t.Fatalf("Lock(%q) = %v, %v", q, ok, err)
		}
		if err := st.Complete(ctx, q, m.LockToken); err != nil {
			t.Fatal(err)
		}
	}

	keepGen, _ := create("keep")
	goneGen, goneMods := create("gone", "m")
	reGen, _ := create("recreated")
	_, modOnly := create("hasmod", "m")
	enqueue("keep", keepGen, "k1")
	enqueue("gone", goneGen, "g1")
	enqueue("gone", goneGen, "g2")
	complete("gone") // g1's feedback is pending
	enqueue("gone/modules/m", goneMods["m"], "gm")
	enqueue("recreated", reGen, "old")
	enqueue("hasmod/modules/m", modOnly["m"], "hm")

	if err := reg.DeleteDevice(ctx, "gone", ""); err != nil {
		t.Fatal(err)
	}
	if err := reg.DeleteDevice(ctx, "recreated", ""); err != nil {
		t.Fatal(err)
	}
	newGen, _ := create("recreated")
	enqueue("recreated", newGen, "new")
	if err := reg.DeleteModule(ctx, "hasmod", "m", ""); err != nil {
		t.Fatal(err)
	}

	// New reconciles once before it returns.
	svc, err := New(st, reg, "hub", Config{ReconcileInterval: -1}, amqptest.TestLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	gens, err := st.Generations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"keep": {keepGen}, "recreated": {newGen}}
	if !reflect.DeepEqual(gens, want) {
		t.Fatalf("after reconcile: %v; want %v", gens, want)
	}
	for q, n := range map[string]int{"keep": 1, "recreated": 1, "gone": 0, "gone/modules/m": 0, "hasmod/modules/m": 0} {
		c, err := st.Pending(ctx, q)
		if err != nil || c.Total() != n {
			t.Errorf("Pending(%q) = %+v, %v; want %d", q, c, err, n)
		}
	}
	if n, err := st.PendingFeedback(ctx); err != nil || n != 0 {
		t.Fatalf("PendingFeedback = %d, %v; want 0 (g1's Success went with its device)", n, err)
	}
	m, ok, err := st.Lock(ctx, "recreated")
	if err != nil || !ok || m.MessageID != "new" {
		t.Fatalf("recreated device's queue: %q, %v, %v; want new", m.MessageID, ok, err)
	}
	// Nothing to do: a second pass changes nothing.
	if err := svc.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := st.Pending(ctx, "keep"); c.Total() != 1 {
		t.Fatalf("second reconcile touched a live device's queue: %+v", c)
	}
}
