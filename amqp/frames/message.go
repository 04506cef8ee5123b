package frames

import (
	"fmt"
	"time"

	"amqphub/amqp/encoding"
)

// MessageFormatBatch is the Azure batch message format: each data section
// of the outer message is one complete encoded message.
const MessageFormatBatch uint32 = 0x80013700

// Section is one encoded message section, as found by SplitSections.
type Section struct {
	Code uint64
	Raw  []byte // the whole described section, aliasing the input
}

// SplitSections walks an encoded message and returns its sections without
// decoding them, so the hub can replace one section (e.g. add annotations)
// and copy the rest verbatim.
func SplitSections(b []byte, dst []Section) ([]Section, error) {
	r := encoding.NewReader(b)
	for r.Len() > 0 {
		start := r.Pos()
		code, err := readCode(r)
		if err != nil {
			return nil, fmt.Errorf("message section at byte %d: %w", start, err)
		}
		if code < CodeHeader || code > CodeFooter {
			return nil, fmt.Errorf("frames: 0x%x is not a message section", code)
		}
		if err := r.Skip(); err != nil {
			return nil, fmt.Errorf("message section 0x%x: %w", code, err)
		}
		dst = append(dst, Section{Code: code, Raw: b[start:r.Pos()]})
	}
	return dst, nil
}

// UnmarshalAMQP decodes an encoded message. Binary fields alias b.
func (m *Message) UnmarshalAMQP(b []byte) error {
	*m = Message{}
	r := encoding.NewReader(b)
	for r.Len() > 0 {
		code, err := readCode(r)
		if err != nil {
			return fmt.Errorf("message section: %w", err)
		}
		switch code {
		case CodeHeader:
			m.Header, err = decodeHeader(r)
		case CodeDeliveryAnn:
			m.DeliveryAnnotations, err = r.ReadMap()
		case CodeMessageAnn:
			m.Annotations, err = r.ReadMap()
		case CodeProperties:
			m.Properties, err = decodeProperties(r)
		case CodeAppProperties:
			var raw map[any]any
			raw, err = r.ReadMap()
			if err == nil && raw != nil {
				m.ApplicationProperties = make(map[string]any, len(raw))
				for k, v := range raw {
					ks, ok := k.(string)
					if !ok {
						return fmt.Errorf("%w: application-properties key of type %T", encoding.ErrUnexpected, k)
					}
					m.ApplicationProperties[ks] = v
				}
			}
		case CodeData:
			var d []byte
			d, err = r.ReadBinary()
			m.Data = append(m.Data, d)
		case CodeSequence:
			var v any
			v, err = r.ReadAny()
			if l, ok := v.([]any); ok {
				m.Sequence = append(m.Sequence, l)
			} else if err == nil {
				err = fmt.Errorf("%w: amqp-sequence of type %T", encoding.ErrUnexpected, v)
			}
		case CodeValue:
			m.Value, err = r.ReadAny()
			m.HasValue = true
		case CodeFooter:
			m.Footer, err = r.ReadMap()
		default:
			return fmt.Errorf("frames: 0x%x is not a message section", code)
		}
		if err != nil {
			return fmt.Errorf("message section 0x%x: %w", code, err)
		}
	}
	return nil
}

func decodeHeader(r *encoding.Reader) (*Header, error) {
	n, end, err := r.ReadListHeaderEnd()
	if err != nil {
		return nil, err
	}
	h := &Header{Priority: 4}
	err = fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			h.Durable, err = r.ReadBool()
		case 1:
			h.Priority, err = r.ReadUbyte()
		case 2:
			var ms uint32
			ms, err = r.ReadUint()
			h.TTL = time.Duration(ms) * time.Millisecond
		case 3:
			h.FirstAcquirer, err = r.ReadBool()
		case 4:
			h.DeliveryCount, err = r.ReadUint()
		default:
			return false, nil
		}
		return true, err
	})
	return h, endList(r, end, err)
}

func decodeProperties(r *encoding.Reader) (*Properties, error) {
	n, end, err := r.ReadListHeaderEnd()
	if err != nil {
		return nil, err
	}
	p := &Properties{}
	err = fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			p.MessageID, err = readMessageID(r)
		case 1:
			p.UserID, err = r.ReadBinary()
		case 2:
			p.To, err = readAddress(r)
		case 3:
			p.Subject, err = r.ReadString()
		case 4:
			p.ReplyTo, err = readAddress(r)
		case 5:
			p.CorrelationID, err = readMessageID(r)
		case 6:
			p.ContentType, err = r.ReadSymbol()
		case 7:
			p.ContentEncoding, err = r.ReadSymbol()
		case 8:
			p.AbsoluteExpiryTime, err = r.ReadTimestamp()
		case 9:
			p.CreationTime, err = r.ReadTimestamp()
		case 10:
			p.GroupID, err = r.ReadString()
		case 11:
			p.GroupSequence, err = r.ReadUint()
		case 12:
			p.ReplyToGroupID, err = r.ReadString()
		default:
			return false, nil
		}
		return true, err
	})
	return p, endList(r, end, err)
}

// readMessageID reads a message-id or correlation-id: ulong, uuid, binary or
// string. The Go type records the AMQP type so replies can echo it exactly.
func readMessageID(r *encoding.Reader) (any, error) {
	v, err := r.ReadAny()
	if err != nil {
		return nil, err
	}
	switch id := v.(type) {
	case uint64, encoding.UUID, string:
		return id, nil
	case []byte:
		return append([]byte(nil), id...), nil
	case uint32: // smalluint/uint0 are not valid here, but some peers send them
		return uint64(id), nil
	}
	return nil, fmt.Errorf("%w: message-id of type %T", encoding.ErrUnexpected, v)
}

// AppendAMQP encodes the message sections in spec order.
func (m *Message) AppendAMQP(b []byte) ([]byte, error) {
	var err error
	if h := m.Header; h != nil {
		f := begin(b, CodeHeader)
		f.boolean(h.Durable, h.Durable)
		f.ubyte(h.Priority, h.Priority != 4)
		f.uint(uint32(h.TTL/time.Millisecond), h.TTL > 0)
		f.boolean(h.FirstAcquirer, h.FirstAcquirer)
		f.uint(h.DeliveryCount, h.DeliveryCount != 0)
		if b, err = f.end(); err != nil {
			return nil, err
		}
	}
	if m.DeliveryAnnotations != nil {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeDeliveryAnn), m.DeliveryAnnotations); err != nil {
			return nil, err
		}
	}
	if m.Annotations != nil {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeMessageAnn), m.Annotations); err != nil {
			return nil, err
		}
	}
	if p := m.Properties; p != nil {
		f := begin(b, CodeProperties)
		f.any(p.MessageID)
		f.binary(p.UserID, p.UserID != nil)
		f.str(p.To, p.To != "")
		f.str(p.Subject, p.Subject != "")
		f.str(p.ReplyTo, p.ReplyTo != "")
		f.any(p.CorrelationID)
		f.sym(p.ContentType)
		f.sym(p.ContentEncoding)
		f.timestamp(p.AbsoluteExpiryTime)
		f.timestamp(p.CreationTime)
		f.str(p.GroupID, p.GroupID != "")
		f.uint(p.GroupSequence, p.GroupSequence != 0)
		f.str(p.ReplyToGroupID, p.ReplyToGroupID != "")
		if b, err = f.end(); err != nil {
			return nil, err
		}
	}
	if m.ApplicationProperties != nil {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeAppProperties), m.ApplicationProperties); err != nil {
			return nil, err
		}
	}
	for _, d := range m.Data {
		b = encoding.AppendBinary(encoding.AppendDescriptor(b, CodeData), d)
	}
	for _, s := range m.Sequence {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeSequence), s); err != nil {
			return nil, err
		}
	}
	if m.HasValue {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeValue), m.Value); err != nil {
			return nil, err
		}
	}
	if m.Footer != nil {
		if b, err = encoding.AppendAny(encoding.AppendDescriptor(b, CodeFooter), m.Footer); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// UnpackBatch returns the messages of a batch (format 0x80013700): each
// data section of the outer message is one encoded message.
func UnpackBatch(outer []byte) ([][]byte, error) {
	var secs []Section
	secs, err := SplitSections(outer, secs)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, s := range secs {
		if s.Code != CodeData {
			continue
		}
		r := encoding.NewReader(s.Raw)
		if _, _, err := r.ReadDescriptor(); err != nil {
			return nil, err
		}
		d, err := r.ReadBinary()
		if err != nil {
			return nil, fmt.Errorf("batch data section: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}
