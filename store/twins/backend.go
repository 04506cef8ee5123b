package twins

import "time"

// The functions below export the write semantics and the stored form that
// the embedded backend uses, so that backends in other packages (the
// JetStream one) behave identically without copying them.

// ApplyReported merges patch into the reported properties of t (which the
// caller owns: on error it must be discarded, being partly changed).
func ApplyReported(t *Twin, patch map[string]any, now time.Time) error {
	return applyReported(t, patch, now)
}

// ApplyUpdate applies the service's write to t (which the caller owns: on
// error it must be discarded). It returns the desired change to announce,
// or nil when desired properties were not written.
func ApplyUpdate(t *Twin, u Update, now time.Time) (*DesiredChange, error) {
	return applyUpdate(t, u, now)
}

// Diff returns the merge patch that turns the properties old into new
// (new without nulls), sharing nothing with either.
func Diff(old, new map[string]any) map[string]any {
	return diff(old, new)
}

// EncodeRecord returns the stored form of t that the Pebble backend writes
// (its ID is not part of it: the key names the twin).
func EncodeRecord(t Twin) ([]byte, error) {
	return encodeRecord(t)
}

// DecodeRecord decodes a record written by EncodeRecord as the twin id.
func DecodeRecord(id ID, b []byte) (Twin, error) {
	return decodeRecord(id, b)
}
