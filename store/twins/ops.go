package twins

import (
	"fmt"
	"time"
)

// The functions below are the twin write semantics every backend shares.
// They mutate a twin the backend owns (freshly decoded, or a copy); on
// error the backend discards it, so a failed write changes nothing.

// applyReported merges patch into the reported properties.
func applyReported(t *Twin, patch map[string]any, now time.Time) error {
	if err := validate(SectionReported, patch); err != nil {
		return err
	}
	applyPatch(t.Reported.Values, t.Reported.Metadata, patch, now, 0)
	if err := checkSize(SectionReported, t.Reported.Values, MaxReportedBytes); err != nil {
		return err
	}
	t.Reported.Version++
	bump(t)
	return nil
}

// applyUpdate applies the service's write; it returns the desired change to
// announce, or nil when desired properties were not written.
func applyUpdate(t *Twin, u Update, now time.Time) (*DesiredChange, error) {
	if !ETagMatches(u.IfMatch, t.ETag) {
		return nil, fmt.Errorf("twin %s: If-Match %s, current etag %q: %w", t.ID, u.IfMatch, t.ETag, ErrPreconditionFailed)
	}
	if err := validate(SectionTags, u.Tags); err != nil {
		return nil, err
	}
	if err := validate(SectionDesired, u.Desired); err != nil {
		return nil, err
	}
	var desiredPatch map[string]any
	writeDesired := false
	if u.Replace {
		t.Tags = dropNulls(copyObject(u.Tags))
		if t.Tags == nil {
			t.Tags = map[string]any{}
		}
		desiredPatch = diff(t.Desired.Values, dropNulls(copyObject(u.Desired)))
		writeDesired = true
	} else {
		if u.Tags != nil {
			applyPatch(t.Tags, nil, u.Tags, now, 0)
		}
		if len(u.Desired) > 0 {
			desiredPatch, writeDesired = u.Desired, true
		}
	}
	if err := checkSize(SectionTags, t.Tags, MaxTagsBytes); err != nil {
		return nil, err
	}
	var change *DesiredChange
	if writeDesired {
		v := t.Desired.Version + 1
		applyPatch(t.Desired.Values, t.Desired.Metadata, desiredPatch, now, v)
		if err := checkSize(SectionDesired, t.Desired.Values, MaxDesiredBytes); err != nil {
			return nil, err
		}
		t.Desired.Version = v
		change = &DesiredChange{ID: t.ID, Generation: t.Generation, Version: v, Patch: copyObject(desiredPatch)}
	}
	bump(t)
	return change, nil
}

func bump(t *Twin) {
	t.Version++
	t.ETag = ETagFor(t.Generation, t.Version)
}
