// Package twinstest is the conformance suite every twins.Store backend must
// pass. A backend's test calls Run with a function that opens an empty
// store and can reopen it as after a process restart.
package twinstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"amqphub/store/twins"
)

// Clock is a manual clock, safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Opener opens an empty store whose clock is now, registering its cleanup
// with t. reopen closes the store it last returned and opens the same
// storage again, as a process restart would; it fails t on error.
type Opener func(t *testing.T, now func() time.Time) (s twins.Store, reopen func() twins.Store)

// Run runs the conformance suite against the backend open provides.
func Run(t *testing.T, open Opener) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, open Opener)
	}{
		{"NewTwin", testNewTwin},
		{"ReportedMergePatch", testReportedMergePatch},
		{"DesiredAndTagsPatch", testDesiredAndTagsPatch},
		{"Replace", testReplace},
		{"IfMatch", testIfMatch},
		{"Limits", testLimits},
		{"InvalidPatches", testInvalidPatches},
		{"Metadata", testMetadata},
		{"Generations", testGenerations},
		{"ModulesAndDeletion", testModulesAndDeletion},
		{"SubscribeDesired", testSubscribeDesired},
		{"ConcurrentWrites", testConcurrentWrites},
		{"Restart", testRestart},
		{"ResultsAreCopies", testResultsAreCopies},
		{"NumbersRoundTrip", testNumbersRoundTrip},
		{"BadIDsAndClose", testBadIDsAndClose},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

var (
	ctx  = context.Background()
	dev  = twins.ID{DeviceID: "dev1"}
	gen1 = "637000000000000001"
	gen2 = "637000000000000002"
	t0   = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
)

func newClock() *Clock { return &Clock{t: t0} }

// obj parses a JSON object literal the way the store keeps JSON.
func obj(t testing.TB, s string) map[string]any {
	t.Helper()
	m, err := twins.ParseObject([]byte(s))
	if err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return m
}

func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sameJSON(t testing.TB, what string, got map[string]any, want string) {
	t.Helper()
	if g, w := jsonOf(t, got), jsonOf(t, obj(t, want)); g != w {
		t.Errorf("%s = %s, want %s", what, g, w)
	}
}

func mustGet(t testing.TB, s twins.Store, id twins.ID, gen string) twins.Twin {
	t.Helper()
	tw, err := s.Get(ctx, id, gen)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	return tw
}

func checkVersions(t testing.TB, tw twins.Twin, version, desired, reported int64) {
	t.Helper()
	if tw.Version != version || tw.Desired.Version != desired || tw.Reported.Version != reported {
		t.Errorf("versions (twin, desired, reported) = (%d, %d, %d), want (%d, %d, %d)",
			tw.Version, tw.Desired.Version, tw.Reported.Version, version, desired, reported)
	}
	if want := twins.ETagFor(tw.Generation, tw.Version); tw.ETag != want {
		t.Errorf("etag %q, want %q for version %d", tw.ETag, want, tw.Version)
	}
}

func testNewTwin(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	tw := mustGet(t, s, dev, gen1)
	if tw.ID != dev || tw.Generation != gen1 {
		t.Errorf("id %v gen %q, want %v %q", tw.ID, tw.Generation, dev, gen1)
	}
	checkVersions(t, tw, 1, 1, 1)
	for name, m := range map[string]map[string]any{"tags": tw.Tags, "desired": tw.Desired.Values, "reported": tw.Reported.Values} {
		if m == nil || len(m) != 0 {
			t.Errorf("%s of a new twin = %v, want an empty map", name, m)
		}
	}
	if tw.Desired.Metadata == nil || !tw.Desired.Metadata.LastUpdated.IsZero() {
		t.Errorf("new desired metadata = %+v, want a zero $lastUpdated", tw.Desired.Metadata)
	}
}

func testReportedMergePatch(t *testing.T, open Opener) {
	steps := []struct {
		patch, want string
	}{
		{`{"a":1,"b":{"c":"x","d":[1,2]}}`, `{"a":1,"b":{"c":"x","d":[1,2]}}`},
		{`{"b":{"d":[3],"e":true}}`, `{"a":1,"b":{"c":"x","d":[3],"e":true}}`},
		{`{"a":null,"b":{"c":null}}`, `{"b":{"d":[3],"e":true}}`},
		{`{"b":"flat"}`, `{"b":"flat"}`},
		{`{"b":{"n":{"m":null}}}`, `{"b":{"n":{}}}`},
		{`{"missing":null}`, `{"b":{"n":{}}}`},
		{`{}`, `{"b":{"n":{}}}`},
	}
	s, _ := open(t, newClock().Now)
	for i, st := range steps {
		tw, err := s.PatchReported(ctx, dev, gen1, obj(t, st.patch))
		if err != nil {
			t.Fatalf("step %d PatchReported(%s): %v", i, st.patch, err)
		}
		sameJSON(t, fmt.Sprintf("step %d reported", i), tw.Reported.Values, st.want)
		checkVersions(t, tw, int64(i+2), 1, int64(i+2))
		got := mustGet(t, s, dev, gen1)
		sameJSON(t, fmt.Sprintf("step %d reported read back", i), got.Reported.Values, st.want)
		if got.ETag != tw.ETag {
			t.Errorf("step %d: etag read back %q, write returned %q", i, got.ETag, tw.ETag)
		}
	}
}

func testDesiredAndTagsPatch(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	tw, err := s.Update(ctx, dev, gen1, twins.Update{Tags: obj(t, `{"loc":{"city":"Oslo"}}`)})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 2, 1, 1)
	sameJSON(t, "tags", tw.Tags, `{"loc":{"city":"Oslo"}}`)

	tw, err = s.Update(ctx, dev, gen1, twins.Update{
		Tags:    obj(t, `{"loc":{"zip":"0150"}}`),
		Desired: obj(t, `{"rate":5,"cfg":{"mode":"eco"}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 3, 2, 1)
	sameJSON(t, "tags", tw.Tags, `{"loc":{"city":"Oslo","zip":"0150"}}`)
	sameJSON(t, "desired", tw.Desired.Values, `{"rate":5,"cfg":{"mode":"eco"}}`)

	tw, err = s.Update(ctx, dev, gen1, twins.Update{Desired: obj(t, `{"cfg":{"mode":null,"x":1}}`)})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 4, 3, 1)
	sameJSON(t, "desired", tw.Desired.Values, `{"rate":5,"cfg":{"x":1}}`)

	// An empty desired patch writes nothing to desired properties.
	tw, err = s.Update(ctx, dev, gen1, twins.Update{Desired: map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 5, 3, 1)
	got := mustGet(t, s, dev, gen1)
	sameJSON(t, "tags read back", got.Tags, `{"loc":{"city":"Oslo","zip":"0150"}}`)
	sameJSON(t, "desired read back", got.Desired.Values, `{"rate":5,"cfg":{"x":1}}`)
}

func testReplace(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Tags: obj(t, `{"a":1,"b":2}`), Desired: obj(t, `{"x":{"y":1,"z":2},"w":3}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PatchReported(ctx, dev, gen1, obj(t, `{"r":1}`)); err != nil {
		t.Fatal(err)
	}
	var changes []twins.DesiredChange
	cancel := s.SubscribeDesired(func(c twins.DesiredChange) { changes = append(changes, c) })
	defer cancel()
	tw, err := s.Update(ctx, dev, gen1, twins.Update{Replace: true, Tags: obj(t, `{"b":3,"n":null}`), Desired: obj(t, `{"x":{"y":1,"z":5},"v":true}`)})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 4, 3, 2)
	sameJSON(t, "tags", tw.Tags, `{"b":3}`)
	sameJSON(t, "desired", tw.Desired.Values, `{"x":{"y":1,"z":5},"v":true}`)
	sameJSON(t, "reported", tw.Reported.Values, `{"r":1}`)
	if len(changes) != 1 {
		t.Fatalf("%d desired changes announced, want 1", len(changes))
	}
	sameJSON(t, "announced patch", changes[0].Patch, `{"x":{"z":5},"w":null,"v":true}`)
	if changes[0].Version != 3 {
		t.Errorf("announced version %d, want 3", changes[0].Version)
	}

	// Replacing with nothing empties tags and desired.
	tw, err = s.Update(ctx, dev, gen1, twins.Update{Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 5, 4, 2)
	if len(tw.Tags) != 0 || len(tw.Desired.Values) != 0 {
		t.Errorf("after an empty replace: tags %v desired %v", tw.Tags, tw.Desired.Values)
	}
}

func testIfMatch(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	// One write makes the version-1 etag stale.
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Tags: obj(t, `{"bump":1}`)}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ifMatch func(etag string) string
		ok      bool
	}{
		{"bare etag", func(e string) string { return e }, true},
		{"quoted etag", func(e string) string { return `"` + e + `"` }, true},
		{"weak quoted etag", func(e string) string { return `W/"` + e + `"` }, true},
		{"star", func(string) string { return "*" }, true},
		{"empty", func(string) string { return "" }, true},
		{"stale etag", func(string) string { return twins.ETagFor(gen1, 1) }, false},
		{"garbage", func(string) string { return `"nope"` }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := mustGet(t, s, dev, gen1)
			tw, err := s.Update(ctx, dev, gen1, twins.Update{IfMatch: tc.ifMatch(before.ETag), Desired: map[string]any{"k": tc.name}})
			after := mustGet(t, s, dev, gen1)
			if tc.ok {
				if err != nil {
					t.Fatalf("Update: %v", err)
				}
				if tw.Version != before.Version+1 || after.ETag == before.ETag {
					t.Errorf("version %d -> %d, etag %q -> %q", before.Version, tw.Version, before.ETag, after.ETag)
				}
				return
			}
			if !errors.Is(err, twins.ErrPreconditionFailed) {
				t.Fatalf("Update with a wrong etag: %v, want ErrPreconditionFailed", err)
			}
			if after.Version != before.Version || !reflect.DeepEqual(after.Desired.Values, before.Desired.Values) {
				t.Errorf("a refused update changed the twin: %+v -> %+v", before, after)
			}
		})
	}
}

// bigObject returns an object with n one-character keys whose string
// values make its compact JSON exactly size characters (size >= 9*n+1).
func bigObject(t testing.TB, n, size int) map[string]any {
	t.Helper()
	// {"k0":"…","k1":"…"}: each entry is `"kI":"` + value + `"` plus commas.
	m := map[string]any{}
	overhead := 2 + n - 1 // braces and commas
	keys := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("k%03d", i)
		overhead += len(keys[i]) + 2 + 1 + 2 // quoted key, colon, quoted value
	}
	rest := size - overhead
	for i, k := range keys {
		l := rest / n
		if i < rest%n {
			l++
		}
		m[k] = strings.Repeat("v", l)
	}
	if b, _ := json.Marshal(m); len(b) != size {
		t.Fatalf("bigObject: %d characters, want %d", len(b), size)
	}
	return m
}

func testLimits(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	tests := []struct {
		name    string
		limit   int
		section twins.Section
		write   func(m map[string]any) error
	}{
		{"reported", twins.MaxReportedBytes, twins.SectionReported, func(m map[string]any) error {
			_, err := s.PatchReported(ctx, dev, gen1, m)
			return err
		}},
		{"desired", twins.MaxDesiredBytes, twins.SectionDesired, func(m map[string]any) error {
			_, err := s.Update(ctx, dev, gen1, twins.Update{Desired: m})
			return err
		}},
		{"tags", twins.MaxTagsBytes, twins.SectionTags, func(m map[string]any) error {
			_, err := s.Update(ctx, dev, gen1, twins.Update{Tags: m})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.limit/twins.MaxStringBytes + 2
			if err := tc.write(bigObject(t, n, tc.limit)); err != nil {
				t.Fatalf("a section of exactly the limit (%d) refused: %v", tc.limit, err)
			}
			before := mustGet(t, s, dev, gen1)
			err := tc.write(map[string]any{"z": "1"})
			var le *twins.LimitError
			if !errors.As(err, &le) || !errors.Is(err, twins.ErrTooLarge) {
				t.Fatalf("a section over the limit: %v, want a *LimitError", err)
			}
			if le.Section != tc.section || le.Limit != tc.limit || le.Size <= tc.limit {
				t.Errorf("LimitError %+v, want section %s limit %d", le, tc.section, tc.limit)
			}
			after := mustGet(t, s, dev, gen1)
			if after.Version != before.Version || after.ETag != before.ETag {
				t.Errorf("a refused write changed the twin version %d -> %d", before.Version, after.Version)
			}
			if _, ok := after.Desired.Values["z"]; ok {
				t.Error("refused property stored")
			}
		})
	}
}

func testInvalidPatches(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	// nest(n, leaf) puts leaf n objects below the root.
	nest := func(n int, leaf string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&b, `"l%d":{`, i)
		}
		b.WriteString(leaf + strings.Repeat("}", n+1))
		return b.String()
	}
	deep := nest(twins.MaxDepth, `"leaf":1`)
	tooDeep := nest(twins.MaxDepth+1, `"leaf":1`)
	deepArray := nest(twins.MaxDepth-1, `"a":[1]`)
	tooDeepArray := nest(twins.MaxDepth, `"a":[1]`)
	tests := []struct {
		name  string
		patch string
		ok    bool
	}{
		{"ten levels", deep, true},
		{"eleven levels", tooDeep, false},
		{"array at level ten", deepArray, true},
		{"array at level eleven", tooDeepArray, false},
		{"dot in key", `{"a.b":1}`, false},
		{"dollar in key", `{"$x":1}`, false},
		{"space in key", `{"a b":1}`, false},
		{"control character in key", `{"a\u0001":1}`, false},
		{"nested bad key", `{"a":{"b.c":1}}`, false},
		{"empty key", `{"":1}`, false},
		{"long key", `{"` + strings.Repeat("k", twins.MaxKeyBytes+1) + `":1}`, false},
		{"key at limit", `{"` + strings.Repeat("k", twins.MaxKeyBytes) + `":1}`, true},
		{"long string", `{"s":"` + strings.Repeat("s", twins.MaxStringBytes+1) + `"}`, false},
		{"string at limit", `{"s":"` + strings.Repeat("s", twins.MaxStringBytes) + `"}`, true},
		{"bad key inside array", `{"a":[{"b.c":1}]}`, false},
		{"unicode key", `{"température":1}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := obj(t, tc.patch)
			for _, w := range []struct {
				what  string
				write func() error
			}{
				{"reported", func() error { _, err := s.PatchReported(ctx, dev, gen1, p); return err }},
				{"desired", func() error { _, err := s.Update(ctx, dev, gen1, twins.Update{Desired: p}); return err }},
				{"tags", func() error { _, err := s.Update(ctx, dev, gen1, twins.Update{Tags: p}); return err }},
				{"replace", func() error { _, err := s.Update(ctx, dev, gen1, twins.Update{Replace: true, Desired: p}); return err }},
			} {
				before := mustGet(t, s, dev, gen1)
				err := w.write()
				if tc.ok && err != nil {
					t.Errorf("%s: refused: %v", w.what, err)
				}
				if !tc.ok {
					if !errors.Is(err, twins.ErrInvalidPatch) {
						t.Errorf("%s: %v, want ErrInvalidPatch", w.what, err)
					}
					if after := mustGet(t, s, dev, gen1); after.Version != before.Version {
						t.Errorf("%s: a refused write changed the version", w.what)
					}
				}
			}
		})
	}
	for _, bad := range []string{``, `[]`, `"x"`, `null`, `{"a":1} {}`, `{"a":`} {
		if _, err := twins.ParseObject([]byte(bad)); !errors.Is(err, twins.ErrInvalidPatch) {
			t.Errorf("ParseObject(%q) = %v, want ErrInvalidPatch", bad, err)
		}
	}
}

func testMetadata(t *testing.T, open Opener) {
	clock := newClock()
	s, _ := open(t, clock.Now)
	t1 := clock.Now()
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Desired: obj(t, `{"a":1,"o":{"p":1,"q":2}}`)}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	t2 := clock.Now()
	tw, err := s.Update(ctx, dev, gen1, twins.Update{Desired: obj(t, `{"o":{"q":3},"a":null}`)})
	if err != nil {
		t.Fatal(err)
	}
	m := tw.Desired.Metadata
	check := func(what string, md *twins.Metadata, at time.Time, version int64) {
		t.Helper()
		if md == nil {
			t.Fatalf("%s: no metadata", what)
		}
		if !md.LastUpdated.Equal(at) || md.LastUpdatedVersion != version {
			t.Errorf("%s: updated %v version %d, want %v version %d", what, md.LastUpdated, md.LastUpdatedVersion, at, version)
		}
	}
	check("desired", m, t2, 3)
	check("desired.o", m.Children["o"], t2, 3)
	check("desired.o.p", m.Children["o"].Children["p"], t1, 2)
	check("desired.o.q", m.Children["o"].Children["q"], t2, 3)
	if _, ok := m.Children["a"]; ok {
		t.Error("metadata of a removed property kept")
	}
	doc := tw.Desired.Document(true)
	md, ok := doc["$metadata"].(map[string]any)
	if !ok || md["$lastUpdated"] != t2.Format(time.RFC3339Nano) || md["$lastUpdatedVersion"] != int64(3) {
		t.Errorf("$metadata rendering = %v", doc["$metadata"])
	}
	if doc["$version"] != int64(3) {
		t.Errorf("$version = %v, want 3", doc["$version"])
	}

	clock.Advance(time.Minute)
	tw, err = s.PatchReported(ctx, dev, gen1, obj(t, `{"r":{"s":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	check("reported.r.s", tw.Reported.Metadata.Children["r"].Children["s"], clock.Now(), 0)
	if _, ok := tw.Reported.Document(true)["$metadata"].(map[string]any)["$lastUpdatedVersion"]; ok {
		t.Error("reported $metadata carries $lastUpdatedVersion")
	}
	// Metadata survives a read back.
	got := mustGet(t, s, dev, gen1)
	check("read back desired.o.p", got.Desired.Metadata.Children["o"].Children["p"], t1, 2)
}

func testGenerations(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Tags: obj(t, `{"old":1}`), Desired: obj(t, `{"old":1}`)}); err != nil {
		t.Fatal(err)
	}
	old := mustGet(t, s, dev, gen1)
	fresh := mustGet(t, s, dev, gen2)
	checkVersions(t, fresh, 1, 1, 1)
	if len(fresh.Tags) != 0 || len(fresh.Desired.Values) != 0 {
		t.Errorf("twin of a new generation carries the old one's state: %+v", fresh)
	}
	if fresh.ETag == old.ETag || fresh.ETag == twins.ETagFor(gen1, 1) {
		t.Errorf("new generation's etag %q collides with the old one's", fresh.ETag)
	}
	// An If-Match of the old generation does not apply to the new one.
	if _, err := s.Update(ctx, dev, gen2, twins.Update{IfMatch: old.ETag, Tags: obj(t, `{"x":1}`)}); !errors.Is(err, twins.ErrPreconditionFailed) {
		t.Errorf("old generation's etag accepted: %v", err)
	}
	tw, err := s.PatchReported(ctx, dev, gen2, obj(t, `{"new":1}`))
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, 2, 1, 2)
	if len(tw.Desired.Values) != 0 {
		t.Errorf("write in a new generation merged into the old twin: %v", tw.Desired.Values)
	}
	if back := mustGet(t, s, dev, gen1); back.Version != 1 || len(back.Tags) != 0 {
		t.Errorf("old generation after the new one wrote: %+v, want a new twin", back)
	}
}

func testModulesAndDeletion(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	ids := []twins.ID{
		{DeviceID: "d1"}, {DeviceID: "d1", ModuleID: "m1"}, {DeviceID: "d1", ModuleID: "m2"},
		{DeviceID: "d10"}, {DeviceID: "d10", ModuleID: "m1"}, {DeviceID: "d"},
	}
	for _, id := range ids {
		if _, err := s.PatchReported(ctx, id, gen1, map[string]any{"who": id.String()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		if got := mustGet(t, s, id, gen1).Reported.Values["who"]; got != id.String() {
			t.Errorf("%s: reported who = %v: twins are not isolated", id, got)
		}
	}
	if err := s.Delete(ctx, twins.ID{DeviceID: "d1", ModuleID: "m2"}); err != nil {
		t.Fatal(err)
	}
	if v := mustGet(t, s, twins.ID{DeviceID: "d1", ModuleID: "m2"}, gen1).Version; v != 1 {
		t.Errorf("deleted module twin still has version %d", v)
	}
	if err := s.DeleteDevice(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		gone := id.DeviceID == "d1"
		tw := mustGet(t, s, id, gen1)
		if gone && tw.Version != 1 {
			t.Errorf("%s survived DeleteDevice(d1)", id)
		}
		if !gone && tw.Reported.Values["who"] != id.String() {
			t.Errorf("%s was removed by DeleteDevice(d1)", id)
		}
	}
}

func testSubscribeDesired(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	var mu sync.Mutex
	var got []twins.DesiredChange
	cancel := s.SubscribeDesired(func(c twins.DesiredChange) {
		mu.Lock()
		got = append(got, c)
		mu.Unlock()
	})
	mod := twins.ID{DeviceID: "dev1", ModuleID: "m"}
	writes := []struct {
		id      twins.ID
		u       twins.Update
		wantVer int64 // 0: no announcement
	}{
		{dev, twins.Update{Desired: obj(t, `{"a":1}`)}, 2},
		{dev, twins.Update{Tags: obj(t, `{"t":1}`)}, 0},
		{mod, twins.Update{Desired: obj(t, `{"m":true}`)}, 2},
		{dev, twins.Update{Desired: obj(t, `{"a":null,"b":{"c":2}}`)}, 3},
		{dev, twins.Update{IfMatch: `"wrong"`, Desired: obj(t, `{"x":1}`)}, 0},
		{dev, twins.Update{Desired: obj(t, `{"y.z":1}`)}, 0},
	}
	var want []twins.DesiredChange
	for _, w := range writes {
		_, err := s.Update(ctx, w.id, gen1, w.u)
		if (err == nil) != (w.wantVer != 0 || w.u.Desired == nil) {
			t.Fatalf("Update(%s, %+v): %v", w.id, w.u, err)
		}
		if w.wantVer != 0 {
			want = append(want, twins.DesiredChange{ID: w.id, Generation: gen1, Version: w.wantVer, Patch: w.u.Desired})
		}
	}
	if _, err := s.PatchReported(ctx, dev, gen1, obj(t, `{"r":1}`)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if g, w := jsonOf(t, got), jsonOf(t, want); g != w {
		t.Errorf("announced %s\nwant %s", g, w)
	}
	mu.Unlock()
	cancel()
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Desired: obj(t, `{"after":1}`)}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Errorf("a cancelled subscriber was called: %d announcements, want %d", len(got), len(want))
	}
}

func testConcurrentWrites(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	const workers, each = 8, 10
	var seen sync.Map
	lastVersion := make(chan int64, workers*each)
	cancel := s.SubscribeDesired(func(c twins.DesiredChange) { lastVersion <- c.Version })
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*2)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				k := fmt.Sprintf("w%d_%d", w, i)
				tw, err := s.PatchReported(ctx, dev, gen1, map[string]any{k: i})
				if err != nil {
					errs <- err
					return
				}
				if _, dup := seen.LoadOrStore(tw.Version, k); dup {
					errs <- fmt.Errorf("two writes returned version %d", tw.Version)
				}
				if _, err := s.Update(ctx, dev, gen1, twins.Update{Desired: map[string]any{k: i}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	tw := mustGet(t, s, dev, gen1)
	checkVersions(t, tw, 1+2*workers*each, 1+workers*each, 1+workers*each)
	if len(tw.Reported.Values) != workers*each || len(tw.Desired.Values) != workers*each {
		t.Errorf("%d reported and %d desired properties, want %d each: lost updates", len(tw.Reported.Values), len(tw.Desired.Values), workers*each)
	}
	close(lastVersion)
	prev := int64(1)
	for v := range lastVersion {
		if v != prev+1 {
			t.Errorf("announcements out of order: %d after %d", v, prev)
		}
		prev = v
	}
}

func testRestart(t *testing.T, open Opener) {
	clock := newClock()
	s, reopen := open(t, clock.Now)
	mod := twins.ID{DeviceID: "dev1", ModuleID: "mod"}
	if _, err := s.Update(ctx, dev, gen1, twins.Update{Tags: obj(t, `{"t":{"u":1}}`), Desired: obj(t, `{"d":[1,"x",{"y":null}]}`)}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := s.PatchReported(ctx, dev, gen1, obj(t, `{"r":1.5}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PatchReported(ctx, mod, gen2, obj(t, `{"m":"x"}`)); err != nil {
		t.Fatal(err)
	}
	before, beforeMod := mustGet(t, s, dev, gen1), mustGet(t, s, mod, gen2)
	s = reopen()
	after, afterMod := mustGet(t, s, dev, gen1), mustGet(t, s, mod, gen2)
	for _, p := range []struct{ a, b twins.Twin }{{before, after}, {beforeMod, afterMod}} {
		if g, w := jsonOf(t, p.b), jsonOf(t, p.a); g != w {
			t.Errorf("after restart %s\nbefore      %s", g, w)
		}
	}
	// Writes continue from the restored versions.
	tw, err := s.Update(ctx, dev, gen1, twins.Update{IfMatch: after.ETag, Desired: obj(t, `{"e":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	checkVersions(t, tw, after.Version+1, after.Desired.Version+1, after.Reported.Version)
}

func testResultsAreCopies(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	patch := obj(t, `{"o":{"k":1},"a":[1,2]}`)
	tw, err := s.Update(ctx, dev, gen1, twins.Update{Desired: patch, Tags: obj(t, `{"t":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	patch["o"].(map[string]any)["k"] = "caller changed the patch"
	tw.Desired.Values["o"].(map[string]any)["k"] = "caller changed the result"
	tw.Desired.Values["a"].([]any)[0] = "x"
	tw.Tags["t"] = 2
	tw.Desired.Metadata.Children["o"].LastUpdatedVersion = 99
	got := mustGet(t, s, dev, gen1)
	sameJSON(t, "desired", got.Desired.Values, `{"o":{"k":1},"a":[1,2]}`)
	sameJSON(t, "tags", got.Tags, `{"t":1}`)
	if got.Desired.Metadata.Children["o"].LastUpdatedVersion != 2 {
		t.Error("metadata shared with a caller")
	}
}

func testNumbersRoundTrip(t *testing.T, open Opener) {
	s, reopen := open(t, newClock().Now)
	const doc = `{"big":9007199254740993,"neg":-12345678901234567,"dec":0.1000000000000000055511151231257827,"exp":1e300}`
	if _, err := s.PatchReported(ctx, dev, gen1, obj(t, doc)); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	got := mustGet(t, s, dev, gen1).Reported.Values
	for k, want := range map[string]string{"big": "9007199254740993", "neg": "-12345678901234567", "dec": "0.1000000000000000055511151231257827", "exp": "1e300"} {
		if n, ok := got[k].(json.Number); !ok || string(n) != want {
			t.Errorf("%s = %#v, want json.Number(%s)", k, got[k], want)
		}
	}
}

func testBadIDsAndClose(t *testing.T, open Opener) {
	s, _ := open(t, newClock().Now)
	for _, id := range []twins.ID{{}, {DeviceID: "a\x00b"}, {DeviceID: "a", ModuleID: "m\x00"}} {
		if _, err := s.Get(ctx, id, gen1); !errors.Is(err, twins.ErrInvalidID) {
			t.Errorf("Get(%q): %v, want ErrInvalidID", id, err)
		}
		if _, err := s.PatchReported(ctx, id, gen1, nil); !errors.Is(err, twins.ErrInvalidID) {
			t.Errorf("PatchReported(%q): %v, want ErrInvalidID", id, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(cctx, dev, gen1); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Get(ctx, dev, gen1); !errors.Is(err, twins.ErrClosed) {
		t.Errorf("Get after Close: %v, want ErrClosed", err)
	}
	if _, err := s.Update(ctx, dev, gen1, twins.Update{}); !errors.Is(err, twins.ErrClosed) {
		t.Errorf("Update after Close: %v, want ErrClosed", err)
	}
	if err := s.DeleteDevice(ctx, "dev1"); !errors.Is(err, twins.ErrClosed) {
		t.Errorf("DeleteDevice after Close: %v, want ErrClosed", err)
	}
}
