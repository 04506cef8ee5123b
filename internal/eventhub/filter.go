package eventhub

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"amqphub/amqp/encoding"
	"amqphub/internal/telemetry"
	"amqphub/store/partlog"
)

// The selector filter Event Hubs readers put in their source's filter set.
// The key and the descriptor may be the symbol or (descriptor only) the
// numeric code 0x0000468C00000004.
const (
	selectorFilterName encoding.Symbol = "apache.org:selector-filter:string"
	selectorFilterCode uint64          = 0x0000468C00000004
)

// posKind says which annotation a start position compares.
type posKind int

const (
	posStart    posKind = iota // no filter: the first retained event
	posOffset                  // x-opt-offset
	posLatest                  // x-opt-offset '@latest'
	posSequence                // x-opt-sequence-number
	posTime                    // x-opt-enqueued-time (Unix ms)
)

// startPos is a parsed selector: where a reader starts.
type startPos struct {
	kind      posKind
	inclusive bool  // >= rather than >
	value     int64 // offset, sequence number or Unix ms
}

// errBadFilter marks selector errors (the attach is refused with
// amqp:not-allowed).
var errBadFilter = errors.New("invalid selector filter")

// selectorOf extracts the selector expression from a source filter set. It
// returns "" when the set holds no selector filter.
func selectorOf(filter map[encoding.Symbol]any) (string, error) {
	for k, v := range filter {
		if d, ok := v.(*encoding.Described); ok {
			if !isSelectorDescriptor(d.Descriptor) && k != selectorFilterName {
				continue
			}
			s, ok := d.Value.(string)
			if !ok {
				return "", fmt.Errorf("%w: the selector filter's value is a %T, not a string", errBadFilter, d.Value)
			}
			return s, nil
		}
		if k == selectorFilterName {
			// Some clients put the bare string under the filter's name.
			if s, ok := v.(string); ok {
				return s, nil
			}
			return "", fmt.Errorf("%w: the selector filter's value is a %T, not a described string", errBadFilter, v)
		}
	}
	return "", nil
}

func isSelectorDescriptor(d any) bool {
	switch d := d.(type) {
	case uint64:
		return d == selectorFilterCode
	case encoding.Symbol:
		return d == selectorFilterName
	}
	return false
}

// parseSelector parses the expressions Event Hubs readers send:
//
//	amqp.annotation.x-opt-offset > '-1'            (start of the stream)
//	amqp.annotation.x-opt-offset >= '@latest'      (end of the stream)
//	amqp.annotation.x-opt-offset > '1234'
//	amqp.annotation.x-opt-sequence-number >= '42'
//	amqp.annotation.x-opt-enqueued-time > '1700000000000'   (Unix ms)
//
// The annotation name is matched without regard to case, whitespace around
// the operator is optional and the value may be unquoted. An empty
// expression means the start of the stream.
func parseSelector(expr string) (startPos, error) {
	s := strings.TrimSpace(expr)
	if s == "" {
		return startPos{kind: posStart}, nil
	}
	const prefix = "amqp.annotation."
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return startPos{}, fmt.Errorf("%w %q: expected amqp.annotation.x-opt-offset, x-opt-sequence-number or x-opt-enqueued-time", errBadFilter, expr)
	}
	s = s[len(prefix):]
	i := strings.IndexAny(s, "<>= \t")
	if i <= 0 {
		return startPos{}, fmt.Errorf("%w %q: expected an operator > or >=", errBadFilter, expr)
	}
	name := s[:i]
	s = strings.TrimLeft(s[i:], " \t")
	var p startPos
	switch {
	case strings.HasPrefix(s, ">="):
		p.inclusive, s = true, s[2:]
	case strings.HasPrefix(s, ">"):
		s = s[1:]
	default:
		return startPos{}, fmt.Errorf("%w %q: only the operators > and >= are supported", errBadFilter, expr)
	}
	val := strings.TrimSpace(s)
	if len(val) >= 2 && val[0] == '\'' && val[len(val)-1] == '\'' {
		val = val[1 : len(val)-1]
	} else if strings.ContainsAny(val, "' \t") {
		return startPos{}, fmt.Errorf("%w %q: the value must be one number, optionally in single quotes", errBadFilter, expr)
	}
	switch strings.ToLower(name) {
	case telemetry.AnnOffset:
		switch val {
		case "@latest":
			p.kind = posLatest
			return p, nil
		case "-1":
			p.kind = posStart
			return p, nil
		}
		p.kind = posOffset
	case telemetry.AnnSequenceNumber:
		p.kind = posSequence
	case telemetry.AnnEHEnqueuedTime:
		p.kind = posTime
	default:
		return startPos{}, fmt.Errorf("%w %q: unknown annotation %q", errBadFilter, expr, name)
	}
	// Values before the start of the stream (such as -1) clamp to it.
	n, err := strconv.ParseInt(val, 10, 64)
	if err != nil {
		return startPos{}, fmt.Errorf("%w %q: %q is not an integer", errBadFilter, expr, val)
	}
	p.value = n
	return p, nil
}

// errOutOfRange marks start positions past the end of the partition
// (refused with com.microsoft:argument-out-of-range, as Event Hubs does for
// sequence numbers it has not assigned).
var errOutOfRange = errors.New("start position out of range")

// resolve returns the sequence number of the first event a reader at p
// receives from partition part of lg. It is called at attach time, so
// '@latest' means "events enqueued after this attach".
func (p startPos) resolve(lg partlog.Log, part int) (int64, error) {
	info, err := lg.Info(part)
	if err != nil {
		return 0, fmt.Errorf("partition %d info: %w", part, err)
	}
	switch p.kind {
	case posStart:
		return info.BeginSeq, nil
	case posLatest:
		return info.LastSeq + 1, nil
	case posSequence:
		first := p.value
		if !p.inclusive {
			if first == maxInt64 {
				return 0, fmt.Errorf("%w: sequence number %d", errOutOfRange, p.value)
			}
			first++
		}
		if first > info.LastSeq+1 {
			return 0, fmt.Errorf("%w: the supplied sequence number %d is invalid: the last sequence number in partition %d is %d", errOutOfRange, p.value, part, info.LastSeq)
		}
		return max(first, info.BeginSeq), nil
	case posOffset:
		off := p.value
		if !p.inclusive && off < maxInt64 {
			off++
		}
		seq, err := lg.SeekOffset(part, max(off, 0))
		if err != nil {
			return 0, fmt.Errorf("partition %d seek offset %d: %w", part, off, err)
		}
		return seq, nil
	case posTime:
		t := p.value
		if !p.inclusive && t < maxInt64 {
			t++
		}
		seq, err := lg.SeekTime(part, max(t, 0))
		if err != nil {
			return 0, fmt.Errorf("partition %d seek time %d: %w", part, t, err)
		}
		return seq, nil
	}
	return 0, fmt.Errorf("unknown start position kind %d", p.kind)
}

const maxInt64 = int64(^uint64(0) >> 1)
