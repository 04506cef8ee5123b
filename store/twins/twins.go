// Package twins stores IoT Hub device and module twins: tags, desired
// properties and reported properties, each section with its own $version,
// plus the twin's version and etag, and the $metadata IoT Hub keeps for
// every property.
//
// # Semantics (as IoT Hub)
//
//   - Updates are JSON merge patches: a null removes a property, an object
//     merges into an object, anything else (including an array) replaces.
//   - Every accepted write bumps the twin's Version (and so its ETag); a
//     write to desired properties bumps Desired.Version, a write to reported
//     properties bumps Reported.Version. A new twin has all three at 1.
//   - Limits: desired and reported properties 32 KB each, tags 8 KB (counted
//     as the compact JSON of the section without $version and $metadata);
//     objects nest at most 10 levels below the section; keys are at most
//     1 KB and contain no '.', '$', space or control characters; strings
//     are at most 4 KB. Violations fail with a *LimitError (errors.Is
//     ErrTooLarge) or an error that is errors.Is ErrInvalidPatch, and
//     change nothing.
//   - Desired-property changes are announced to subscribers
//     (SubscribeDesired) after they are durable, in commit order per twin.
//
// # Identity generations
//
// A twin belongs to one generation of its device or module (the registry's
// generationId). Every call names the generation the caller saw in the
// registry; a stored twin of another generation belongs to a deleted
// identity and is treated as absent (and replaced by the next write). This
// is how a device that is deleted and created again gets a fresh twin even
// if nobody told the store about the deletion. Delete and DeleteDevice drop
// stored twins eagerly.
package twins

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
)

// Errors returned by Store implementations, to be tested with errors.Is.
var (
	// ErrPreconditionFailed means an If-Match etag did not match.
	ErrPreconditionFailed = errors.New("twin etag precondition failed")
	// ErrInvalidPatch means a patch or document is not acceptable (not a
	// JSON object, a forbidden key, too deep, a string too long); the
	// wrapping error says where.
	ErrInvalidPatch = errors.New("invalid twin patch")
	// ErrTooLarge means a section would exceed its size limit; the error
	// is a *LimitError.
	ErrTooLarge = errors.New("twin section too large")
	// ErrInvalidID means an empty device id or an id with a NUL byte.
	ErrInvalidID = errors.New("invalid twin id")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("twin store is closed")
)

// Limits, as IoT Hub documents them.
const (
	MaxDesiredBytes  = 32 * 1024
	MaxReportedBytes = 32 * 1024
	MaxTagsBytes     = 8 * 1024
	// MaxDepth is how many levels objects may nest below a section's root.
	MaxDepth = 10
	// MaxKeyBytes bounds a property name.
	MaxKeyBytes = 1024
	// MaxStringBytes bounds a string value.
	MaxStringBytes = 4 * 1024
)

// Section names a part of a twin.
type Section string

// The sections of a twin.
const (
	SectionTags     Section = "tags"
	SectionDesired  Section = "desired"
	SectionReported Section = "reported"
)

// LimitError reports a section that would exceed its size limit.
type LimitError struct {
	Section Section
	Size    int
	Limit   int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("twin %s would be %d bytes, the limit is %d", e.Section, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *LimitError) Is(target error) bool { return target == ErrTooLarge }

// ID names a twin: a device's (ModuleID empty) or a module's.
type ID struct {
	DeviceID string
	ModuleID string
}

func (id ID) String() string {
	if id.ModuleID == "" {
		return id.DeviceID
	}
	return id.DeviceID + "/" + id.ModuleID
}

// Validate checks that the id can be stored.
func (id ID) Validate() error {
	if id.DeviceID == "" {
		return fmt.Errorf("%w: the device id is empty", ErrInvalidID)
	}
	if strings.IndexByte(id.DeviceID, 0) >= 0 || strings.IndexByte(id.ModuleID, 0) >= 0 {
		return fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidID, id.String())
	}
	return nil
}

// Twin is a twin document. Maps hold decoded JSON (objects as
// map[string]any, arrays as []any, numbers as json.Number); values a Store
// returns belong to the caller.
type Twin struct {
	ID ID
	// Generation is the identity generation the twin belongs to.
	Generation string
	// Version counts accepted writes to the twin (1 for a new twin).
	Version int64
	// ETag changes with every write; compare it opaquely.
	ETag     string
	Tags     map[string]any
	Desired  Properties
	Reported Properties
}

// Properties is the desired or reported section.
type Properties struct {
	// Version is the section's $version (1 for a new twin).
	Version int64
	// Values are the properties, without $version and $metadata.
	Values map[string]any
	// Metadata mirrors Values: when each property was last updated.
	Metadata *Metadata
}

// Metadata is IoT Hub's $metadata for one object or property.
type Metadata struct {
	LastUpdated time.Time
	// LastUpdatedVersion is the desired $version of the last update (0 in
	// reported properties, where IoT Hub does not track it).
	LastUpdatedVersion int64
	// Children holds the metadata of an object's properties.
	Children map[string]*Metadata
}

// Update is the service's write to a twin (REST PATCH or PUT).
type Update struct {
	// IfMatch is an etag ("" or "*" for unconditional; surrounding quotes
	// and a W/ prefix are ignored).
	IfMatch string
	// Replace replaces tags and desired properties with Tags and Desired
	// (nil meaning empty), as PUT /twins/{id} does. Otherwise Tags and
	// Desired are merge patches and nil leaves a section unchanged.
	Replace bool
	Tags    map[string]any
	Desired map[string]any
}

// DesiredChange announces a durable change of desired properties.
type DesiredChange struct {
	ID         ID
	Generation string
	// Version is the new desired $version.
	Version int64
	// Patch is the merge patch from the old desired properties to the new
	// ones (for a replace, the difference), without $version. Subscribers
	// share it and must not modify it.
	Patch map[string]any
}

// Store persists twins. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the twin of id in generation; a twin never written (or
	// written for another generation) is returned new and empty.
	Get(ctx context.Context, id ID, generation string) (Twin, error)
	// PatchReported merges patch into the reported properties.
	PatchReported(ctx context.Context, id ID, generation string, patch map[string]any) (Twin, error)
	// Update applies the service's write to tags and desired properties.
	Update(ctx context.Context, id ID, generation string, u Update) (Twin, error)
	// Delete drops the twin of id (a device's or a module's).
	Delete(ctx context.Context, id ID) error
	// DeleteDevice drops the twin of a device and those of its modules.
	DeleteDevice(ctx context.Context, deviceID string) error
	// SubscribeDesired registers fn for every desired-property change of
	// every twin, until cancel is called. fn runs after the change is
	// durable, on the writer's goroutine, in commit order per twin; it must
	// not block and must not call the Store.
	SubscribeDesired(fn func(DesiredChange)) (cancel func())
	// Close releases resources; later calls fail with ErrClosed.
	Close() error
}

// ETagFor returns the etag of a twin version in a generation: eight bytes
// in base64 like IoT Hub's ("AAAAAAAAAAE="), mixed with the generation so
// that an etag of a deleted identity's twin does not match its successor's.
func ETagFor(generation string, version int64) string {
	h := fnv.New64a()
	h.Write([]byte(generation))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.Sum64()^uint64(version))
	return base64.StdEncoding.EncodeToString(b[:])
}

// ETagMatches reports whether an If-Match value accepts the current etag.
func ETagMatches(ifMatch, current string) bool {
	v := strings.TrimSpace(ifMatch)
	v = strings.TrimPrefix(v, "W/")
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return v == "" || v == "*" || v == current
}

// NewTwin returns the empty twin a new identity has.
func NewTwin(id ID, generation string) Twin {
	return Twin{
		ID:         id,
		Generation: generation,
		Version:    1,
		ETag:       ETagFor(generation, 1),
		Tags:       map[string]any{},
		Desired:    Properties{Version: 1, Values: map[string]any{}, Metadata: &Metadata{}},
		Reported:   Properties{Version: 1, Values: map[string]any{}, Metadata: &Metadata{}},
	}
}
