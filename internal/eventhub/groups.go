package eventhub

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultConsumerGroup always exists; names match without regard to case.
const DefaultConsumerGroup = "$Default"

// DefaultMaxConsumerGroups is IoT Hub's limit on the built-in endpoint
// (Standard tier), $Default included.
const DefaultMaxConsumerGroups = 20

// maxGroupNameLen is the longest consumer group name IoT Hub accepts.
const maxGroupNameLen = 50

// Consumer group errors.
var (
	ErrInvalidGroupName  = errors.New("eventhub: invalid consumer group name")
	ErrGroupNotFound     = errors.New("eventhub: consumer group not found")
	ErrTooManyGroups     = errors.New("eventhub: too many consumer groups")
	ErrDefaultGroupFixed = errors.New("eventhub: the $Default consumer group cannot be deleted")
)

// ConsumerGroup describes a consumer group of the built-in endpoint.
type ConsumerGroup struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// stateFile is the persisted form: the entity's creation time (reported as
// created_at) and the created groups ($Default is implicit).
type stateFile struct {
	CreatedAt      time.Time       `json:"createdAt"`
	ConsumerGroups []ConsumerGroup `json:"consumerGroups"`
}

// groupStore holds the consumer groups. With a path it persists every
// change to a small JSON file (written to a temporary file, synced and
// renamed, so a crash leaves the old or the new list, never a torn one);
// without one it keeps them in memory.
type groupStore struct {
	path string
	max  int

	mu      sync.Mutex
	created time.Time
	groups  map[string]ConsumerGroup // lower-cased name -> group, $Default excluded
}

// openGroups loads the store from path ("" = in memory).
func openGroups(path string, max int, now time.Time) (*groupStore, error) {
	s := &groupStore{path: path, max: max, created: now.UTC().Truncate(time.Millisecond), groups: map[string]ConsumerGroup{}}
	if path == "" {
		return s, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("consumer group store directory: %w", err)
		}
		if err := s.saveLocked(); err != nil {
			return nil, err
		}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading consumer groups: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("consumer group file %s is corrupt: %w", path, err)
	}
	if !st.CreatedAt.IsZero() {
		s.created = st.CreatedAt
	}
	for _, g := range st.ConsumerGroups {
		if err := validGroupName(g.Name); err != nil {
			return nil, fmt.Errorf("consumer group file %s: %w", path, err)
		}
		s.groups[strings.ToLower(g.Name)] = g
	}
	return s, nil
}

// validGroupName checks a name a user wants to create: 1-50 letters,
// digits, '-', '.' or '_', starting and ending with a letter or digit.
func validGroupName(name string) error {
	if name == "" || len(name) > maxGroupNameLen {
		return fmt.Errorf("%w %q: names have 1 to %d characters", ErrInvalidGroupName, name, maxGroupNameLen)
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !alnum(c) && c != '-' && c != '.' && c != '_' {
			return fmt.Errorf("%w %q: only letters, digits, '-', '.' and '_' are allowed", ErrInvalidGroupName, name)
		}
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return fmt.Errorf("%w %q: names start and end with a letter or digit", ErrInvalidGroupName, name)
	}
	return nil
}

func isDefaultGroup(name string) bool { return strings.EqualFold(name, DefaultConsumerGroup) }

// createdAt returns the entity's creation time.
func (s *groupStore) createdAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.created
}

// get returns the group named name (any case).
func (s *groupStore) get(name string) (ConsumerGroup, bool) {
	if isDefaultGroup(name) {
		return ConsumerGroup{Name: DefaultConsumerGroup, CreatedAt: s.createdAt()}, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[strings.ToLower(name)]
	return g, ok
}

// list returns $Default and the created groups sorted by name.
func (s *groupStore) list() []ConsumerGroup {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConsumerGroup, 0, len(s.groups)+1)
	for _, g := range s.groups {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b ConsumerGroup) int { return strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name)) })
	return append([]ConsumerGroup{{Name: DefaultConsumerGroup, CreatedAt: s.created}}, out...)
}

// create adds a group; an existing one (any case) is returned with
// created=false.
func (s *groupStore) create(name string, now time.Time) (g ConsumerGroup, created bool, err error) {
	if isDefaultGroup(name) {
		g, _ := s.get(name)
		return g, false, nil
	}
	if err := validGroupName(name); err != nil {
		return ConsumerGroup{}, false, err
	}
	key := strings.ToLower(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.groups[key]; ok {
		return g, false, nil
	}
	if len(s.groups)+1 >= s.max {
		return ConsumerGroup{}, false, fmt.Errorf("%w: the limit is %d including %s", ErrTooManyGroups, s.max, DefaultConsumerGroup)
	}
	g = ConsumerGroup{Name: name, CreatedAt: now.UTC().Truncate(time.Millisecond)}
	s.groups[key] = g
	if err := s.saveLocked(); err != nil {
		delete(s.groups, key)
		return ConsumerGroup{}, false, err
	}
	return g, true, nil
}

// remove deletes a group.
func (s *groupStore) remove(name string) error {
	if isDefaultGroup(name) {
		return ErrDefaultGroupFixed
	}
	key := strings.ToLower(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[key]
	if !ok {
		return fmt.Errorf("%w: %q", ErrGroupNotFound, name)
	}
	delete(s.groups, key)
	if err := s.saveLocked(); err != nil {
		s.groups[key] = g
		return err
	}
	return nil
}

// saveLocked writes the store durably. Caller holds s.mu (or owns s).
func (s *groupStore) saveLocked() error {
	if s.path == "" {
		return nil
	}
	st := stateFile{CreatedAt: s.created, ConsumerGroups: make([]ConsumerGroup, 0, len(s.groups))}
	for _, g := range s.groups {
		st.ConsumerGroups = append(st.ConsumerGroups, g)
	}
	slices.SortFunc(st.ConsumerGroups, func(a, b ConsumerGroup) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding consumer groups: %w", err)
	}
	if err := writeFileAtomic(s.path, append(b, '\n')); err != nil {
		return fmt.Errorf("saving consumer groups: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data: temporary file, fsync, rename,
// fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
