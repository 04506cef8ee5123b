package frames

import (
	"errors"
	"fmt"
	"time"

	"amqphub/amqp/encoding"
)

// ErrMissingField reports a mandatory field that was null or absent.
var ErrMissingField = errors.New("frames: mandatory field missing")

// errListSize reports a described list whose encoded size disagrees with
// the fields it holds (they end before or run past it).
var errListSize = fmt.Errorf("%w: list size disagrees with its fields", encoding.ErrBadSize)

// symbolCodes maps the symbolic descriptors of the spec types to their
// numeric codes; the spec lets a peer use either form.
var symbolCodes = map[encoding.Symbol]uint64{
	"amqp:error:list":                 CodeError,
	"amqp:open:list":                  CodeOpen,
	"amqp:begin:list":                 CodeBegin,
	"amqp:attach:list":                CodeAttach,
	"amqp:flow:list":                  CodeFlow,
	"amqp:transfer:list":              CodeTransfer,
	"amqp:disposition:list":           CodeDisposition,
	"amqp:detach:list":                CodeDetach,
	"amqp:end:list":                   CodeEnd,
	"amqp:close:list":                 CodeClose,
	"amqp:received:list":              CodeReceived,
	"amqp:accepted:list":              CodeAccepted,
	"amqp:rejected:list":              CodeRejected,
	"amqp:released:list":              CodeReleased,
	"amqp:modified:list":              CodeModified,
	"amqp:source:list":                CodeSource,
	"amqp:target:list":                CodeTarget,
	"amqp:sasl-mechanisms:list":       CodeSASLMechanisms,
	"amqp:sasl-init:list":             CodeSASLInit,
	"amqp:sasl-challenge:list":        CodeSASLChallenge,
	"amqp:sasl-response:list":         CodeSASLResponse,
	"amqp:sasl-outcome:list":          CodeSASLOutcome,
	"amqp:header:list":                CodeHeader,
	"amqp:delivery-annotations:map":   CodeDeliveryAnn,
	"amqp:message-annotations:map":    CodeMessageAnn,
	"amqp:properties:list":            CodeProperties,
	"amqp:application-properties:map": CodeAppProperties,
	"amqp:data:binary":                CodeData,
	"amqp:amqp-sequence:list":         CodeSequence,
	"amqp:amqp-value:*":               CodeValue,
	"amqp:footer:map":                 CodeFooter,
}

// readCode reads a descriptor and returns its numeric code, translating the
// spec's symbolic descriptors. An unknown symbol is an error.
func readCode(r *encoding.Reader) (uint64, error) {
	code, sym, err := r.ReadDescriptor()
	if err != nil || sym == "" {
		return code, err
	}
	if c, ok := symbolCodes[sym]; ok {
		return c, nil
	}
	return 0, fmt.Errorf("%w: descriptor %q", encoding.ErrUnexpected, sym)
}

// Decoder decodes frame bodies into structs it owns and reuses, so the hot
// performatives (flow, transfer, disposition) decode without allocating.
// A performative returned by Decode is valid until the next call.
type Decoder struct {
	r        encoding.Reader
	open     Open
	begin    Begin
	attach   Attach
	flow     Flow
	transfer Transfer
	disp     Disposition
	detach   Detach
	end      End
	close    Close
	mechs    SASLMechanisms
	init     SASLInit
	chal     SASLChallenge
	resp     SASLResponse
	outcome  SASLOutcome
}

// Decode decodes one frame body (the bytes after the frame header). For a
// transfer, the bytes after the performative are left in Transfer.Payload.
func (d *Decoder) Decode(body []byte) (Performative, error) {
	r := &d.r
	r.Reset(body)
	code, err := readCode(r)
	if err != nil {
		return nil, fmt.Errorf("performative descriptor: %w", err)
	}
	n, end, err := r.ReadListHeaderEnd()
	if err != nil {
		return nil, fmt.Errorf("performative 0x%02x: %w", code, err)
	}
	var p Performative
	switch code {
	case CodeOpen:
		d.open = Open{}
		p, err = &d.open, decodeOpen(r, n, &d.open)
	case CodeBegin:
		d.begin = Begin{}
		p, err = &d.begin, decodeBegin(r, n, &d.begin)
	case CodeAttach:
		d.attach = Attach{}
		p, err = &d.attach, decodeAttach(r, n, &d.attach)
	case CodeFlow:
		d.flow = Flow{}
		p, err = &d.flow, decodeFlow(r, n, &d.flow)
	case CodeTransfer:
		d.transfer = Transfer{}
		p, err = &d.transfer, decodeTransfer(r, n, &d.transfer)
	case CodeDisposition:
		d.disp = Disposition{}
		p, err = &d.disp, decodeDisposition(r, n, &d.disp)
	case CodeDetach:
		d.detach = Detach{}
		p, err = &d.detach, decodeDetach(r, n, &d.detach)
	case CodeEnd:
		d.end = End{}
		p, err = &d.end, decodeErrorOnly(r, n, &d.end.Error)
	case CodeClose:
		d.close = Close{}
		p, err = &d.close, decodeErrorOnly(r, n, &d.close.Error)
	case CodeSASLMechanisms:
		d.mechs = SASLMechanisms{}
		p, err = &d.mechs, decodeMechanisms(r, n, &d.mechs)
	case CodeSASLInit:
		d.init = SASLInit{}
		p, err = &d.init, decodeSASLInit(r, n, &d.init)
	case CodeSASLChallenge:
		d.chal = SASLChallenge{}
		p, err = &d.chal, decodeBinaryOnly(r, n, &d.chal.Challenge)
	case CodeSASLResponse:
		d.resp = SASLResponse{}
		p, err = &d.resp, decodeBinaryOnly(r, n, &d.resp.Response)
	case CodeSASLOutcome:
		d.outcome = SASLOutcome{}
		p, err = &d.outcome, decodeOutcome(r, n, &d.outcome)
	default:
		return nil, fmt.Errorf("frames: unknown performative 0x%02x", code)
	}
	if err == nil && r.Pos() != end {
		err = errListSize
	}
	if err != nil {
		return nil, fmt.Errorf("%T: %w", p, err)
	}
	if code == CodeTransfer {
		d.transfer.Payload = r.Bytes()
	} else if r.Len() != 0 {
		return nil, fmt.Errorf("frames: %d trailing bytes after %T", r.Len(), p)
	}
	return p, nil
}

// fieldLoop calls fn for each non-null field index; fn returns false for
// unknown indexes, which are skipped for forward compatibility.
func fieldLoop(r *encoding.Reader, n int, fn func(i int) (bool, error)) error {
	for i := 0; i < n; i++ {
		if r.SkipNull() {
			continue
		}
		ok, err := fn(i)
		if err != nil {
			return fmt.Errorf("field %d: %w", i, err)
		}
		if !ok {
			if err := r.Skip(); err != nil {
				return fmt.Errorf("field %d: %w", i, err)
			}
		}
	}
	return nil
}

func decodeOpen(r *encoding.Reader, n int, o *Open) error {
	o.MaxFrameSize, o.ChannelMax = 0xFFFFFFFF, 0xFFFF
	have := false
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			o.ContainerID, err = r.ReadString()
			have = true
		case 1:
			o.Hostname, err = r.ReadString()
		case 2:
			o.MaxFrameSize, err = r.ReadUint()
		case 3:
			o.ChannelMax, err = r.ReadUshort()
		case 4:
			var ms uint32
			ms, err = r.ReadUint()
			o.IdleTimeout = time.Duration(ms) * time.Millisecond
		case 5:
			o.OutgoingLocales, err = r.ReadSymbols()
		case 6:
			o.IncomingLocales, err = r.ReadSymbols()
		case 7:
			o.OfferedCapabilities, err = r.ReadSymbols()
		case 8:
			o.DesiredCapabilities, err = r.ReadSymbols()
		case 9:
			o.Properties, err = r.ReadMap()
		default:
			return false, nil
		}
		return true, err
	})
	if err == nil && !have {
		err = fmt.Errorf("%w: container-id", ErrMissingField)
	}
	return err
}

func decodeBegin(r *encoding.Reader, n int, b *Begin) error {
	b.HandleMax = 0xFFFFFFFF
	var seen [4]bool
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			b.RemoteChannel, err = r.ReadUshort()
			b.HasRemoteChannel = true
		case 1:
			b.NextOutgoingID, err = r.ReadUint()
		case 2:
			b.IncomingWindow, err = r.ReadUint()
		case 3:
			b.OutgoingWindow, err = r.ReadUint()
		case 4:
			b.HandleMax, err = r.ReadUint()
		case 5:
			b.OfferedCapabilities, err = r.ReadSymbols()
		case 6:
			b.DesiredCapabilities, err = r.ReadSymbols()
		case 7:
			b.Properties, err = r.ReadMap()
		default:
			return false, nil
		}
		if i < 4 {
			seen[i] = true
		}
		return true, err
	})
	if err == nil && !(seen[1] && seen[2] && seen[3]) {
		err = fmt.Errorf("%w: begin windows", ErrMissingField)
	}
	return err
}

func decodeAttach(r *encoding.Reader, n int, a *Attach) error {
	a.SenderSettleMode = SenderSettleMixed
	var seen [3]bool
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			a.Name, err = r.ReadString()
		case 1:
			a.Handle, err = r.ReadUint()
		case 2:
			var v bool
			v, err = r.ReadBool()
			a.Role = Role(v)
		case 3:
			var v uint8
			v, err = r.ReadUbyte()
			if err == nil && v > 2 {
				err = fmt.Errorf("snd-settle-mode %d", v)
			}
			a.SenderSettleMode = SenderSettleMode(v)
		case 4:
			var v uint8
			v, err = r.ReadUbyte()
			if err == nil && v > 1 {
				err = fmt.Errorf("rcv-settle-mode %d", v)
			}
			a.ReceiverSettleMode = ReceiverSettleMode(v)
		case 5:
			a.Source, err = DecodeSource(r)
		case 6:
			a.Target, err = DecodeTarget(r)
		case 7:
			a.Unsettled, err = r.ReadMap()
		case 8:
			a.IncompleteUnsettled, err = r.ReadBool()
		case 9:
			a.InitialDeliveryCount, err = r.ReadUint()
			a.HasInitialDelivery = true
		case 10:
			a.MaxMessageSize, err = r.ReadUlong()
		case 11:
			a.OfferedCapabilities, err = r.ReadSymbols()
		case 12:
			a.DesiredCapabilities, err = r.ReadSymbols()
		case 13:
			a.Properties, err = r.ReadMap()
		default:
			return false, nil
		}
		if i < 3 {
			seen[i] = true
		}
		return true, err
	})
	if err == nil && !(seen[0] && seen[1] && seen[2]) {
		err = fmt.Errorf("%w: attach name, handle or role", ErrMissingField)
	}
	return err
}

// decodeFlow and decodeTransfer avoid fieldLoop's closure: they run per
// message and must not allocate.
func decodeFlow(r *encoding.Reader, n int, f *Flow) error {
	var seen [4]bool
	for i := 0; i < n; i++ {
		if r.SkipNull() {
			continue
		}
		var err error
		switch i {
		case 0:
			f.NextIncomingID, err = r.ReadUint()
			f.HasNextIncomingID = true
		case 1:
			f.IncomingWindow, err = r.ReadUint()
		case 2:
			f.NextOutgoingID, err = r.ReadUint()
		case 3:
			f.OutgoingWindow, err = r.ReadUint()
		case 4:
			f.Handle, err = r.ReadUint()
			f.HasHandle = true
		case 5:
			f.DeliveryCount, err = r.ReadUint()
			f.HasDeliveryCount = true
		case 6:
			f.LinkCredit, err = r.ReadUint()
			f.HasLinkCredit = true
		case 7:
			f.Available, err = r.ReadUint()
			f.HasAvailable = true
		case 8:
			f.Drain, err = r.ReadBool()
		case 9:
			f.Echo, err = r.ReadBool()
		case 10:
			f.Properties, err = r.ReadMap()
		default:
			err = r.Skip()
		}
		if err != nil {
			return fieldErr(i, err)
		}
		if i < 4 {
			seen[i] = true
		}
	}
	if !(seen[1] && seen[2] && seen[3]) {
		return errFlowWindows
	}
	return nil
}

var (
	errFlowWindows    = fmt.Errorf("%w: flow windows", ErrMissingField)
	errTransferHandle = fmt.Errorf("%w: transfer handle", ErrMissingField)
	errDispFirst      = fmt.Errorf("%w: disposition role or first", ErrMissingField)
)

func fieldErr(i int, err error) error { return fmt.Errorf("field %d: %w", i, err) }

func decodeTransfer(r *encoding.Reader, n int, t *Transfer) error {
	seenHandle := false
	for i := 0; i < n; i++ {
		if r.SkipNull() {
			continue
		}
		var err error
		switch i {
		case 0:
			t.Handle, err = r.ReadUint()
			seenHandle = true
		case 1:
			t.DeliveryID, err = r.ReadUint()
			t.HasDeliveryID = true
		case 2:
			t.DeliveryTag, err = r.ReadBinary()
			if err == nil && len(t.DeliveryTag) > 32 {
				err = fmt.Errorf("delivery-tag of %d bytes exceeds 32", len(t.DeliveryTag))
			}
		case 3:
			t.MessageFormat, err = r.ReadUint()
			t.HasMessageFormat = true
		case 4:
			t.Settled, err = r.ReadBool()
			t.HasSettled = true
		case 5:
			t.More, err = r.ReadBool()
		case 6:
			var v uint8
			v, err = r.ReadUbyte()
			t.ReceiverSettleMode, t.HasRcvSettleMode = ReceiverSettleMode(v), true
		case 7:
			t.State, err = DecodeState(r)
		case 8:
			t.Resume, err = r.ReadBool()
		case 9:
			t.Aborted, err = r.ReadBool()
		case 10:
			t.Batchable, err = r.ReadBool()
		default:
			err = r.Skip()
		}
		if err != nil {
			return fieldErr(i, err)
		}
	}
	if !seenHandle {
		return errTransferHandle
	}
	return nil
}

func decodeDisposition(r *encoding.Reader, n int, d *Disposition) error {
	var seen [2]bool
	for i := 0; i < n; i++ {
		if r.SkipNull() {
			continue
		}
		var err error
		switch i {
		case 0:
			var v bool
			v, err = r.ReadBool()
			d.Role = Role(v)
		case 1:
			d.First, err = r.ReadUint()
		case 2:
			d.Last, err = r.ReadUint()
			d.HasLast = true
		case 3:
			d.Settled, err = r.ReadBool()
		case 4:
			d.State, err = DecodeState(r)
		case 5:
			d.Batchable, err = r.ReadBool()
		default:
			err = r.Skip()
		}
		if err != nil {
			return fieldErr(i, err)
		}
		if i < 2 {
			seen[i] = true
		}
	}
	if !(seen[0] && seen[1]) {
		return errDispFirst
	}
	if !d.HasLast {
		d.Last = d.First
	}
	return nil
}

func decodeDetach(r *encoding.Reader, n int, d *Detach) error {
	seen := false
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			d.Handle, err = r.ReadUint()
			seen = true
		case 1:
			d.Closed, err = r.ReadBool()
		case 2:
			d.Error, err = DecodeError(r)
		default:
			return false, nil
		}
		return true, err
	})
	if err == nil && !seen {
		err = fmt.Errorf("%w: detach handle", ErrMissingField)
	}
	return err
}

func decodeErrorOnly(r *encoding.Reader, n int, e **Error) error {
	return fieldLoop(r, n, func(i int) (bool, error) {
		if i != 0 {
			return false, nil
		}
		var err error
		*e, err = DecodeError(r)
		return true, err
	})
}

func decodeMechanisms(r *encoding.Reader, n int, m *SASLMechanisms) error {
	err := fieldLoop(r, n, func(i int) (bool, error) {
		if i != 0 {
			return false, nil
		}
		var err error
		m.Mechanisms, err = r.ReadSymbols()
		return true, err
	})
	if err == nil && len(m.Mechanisms) == 0 {
		err = fmt.Errorf("%w: sasl-server-mechanisms", ErrMissingField)
	}
	return err
}

func decodeSASLInit(r *encoding.Reader, n int, m *SASLInit) error {
	seen := false
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			m.Mechanism, err = r.ReadSymbol()
			seen = true
		case 1:
			m.InitialResponse, err = r.ReadBinary()
		case 2:
			m.Hostname, err = r.ReadString()
		default:
			return false, nil
		}
		return true, err
	})
	if err == nil && !seen {
		err = fmt.Errorf("%w: sasl-init mechanism", ErrMissingField)
	}
	return err
}

func decodeBinaryOnly(r *encoding.Reader, n int, dst *[]byte) error {
	seen := false
	err := fieldLoop(r, n, func(i int) (bool, error) {
		if i != 0 {
			return false, nil
		}
		var err error
		*dst, err = r.ReadBinary()
		seen = true
		return true, err
	})
	if err == nil && !seen {
		err = fmt.Errorf("%w: sasl challenge or response", ErrMissingField)
	}
	return err
}

func decodeOutcome(r *encoding.Reader, n int, m *SASLOutcome) error {
	seen := false
	err := fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			var v uint8
			v, err = r.ReadUbyte()
			m.Result = SASLCode(v)
			seen = true
		case 1:
			m.AdditionalData, err = r.ReadBinary()
		default:
			return false, nil
		}
		return true, err
	})
	if err == nil && !seen {
		// A missing code must not read as SASLOK.
		err = fmt.Errorf("%w: sasl-outcome code", ErrMissingField)
	}
	return err
}

// describedList reads a described list with the wanted descriptor (numeric
// code or symbolic name) and returns its element count and end position
// (for endList).
func describedList(r *encoding.Reader, code uint64, name string) (n, end int, err error) {
	c, sym, err := r.ReadDescriptor()
	if err != nil {
		return 0, 0, err
	}
	if sym != "" && string(sym) != name || sym == "" && c != code {
		return 0, 0, fmt.Errorf("%w: descriptor %v%s, want %s", encoding.ErrUnexpected, c, sym, name)
	}
	return r.ReadListHeaderEnd()
}

// endList checks that the fields of a list ended where its size said.
func endList(r *encoding.Reader, end int, err error) error {
	if err == nil && r.Pos() != end {
		return errListSize
	}
	return err
}

// DecodeError decodes an amqp:error:list (or null).
func DecodeError(r *encoding.Reader) (*Error, error) {
	if r.SkipNull() {
		return nil, nil
	}
	n, end, err := describedList(r, CodeError, "amqp:error:list")
	if err != nil {
		return nil, err
	}
	e := &Error{}
	seen := false
	err = fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			e.Condition, err = r.ReadSymbol()
			seen = true
		case 1:
			e.Description, err = r.ReadString()
		case 2:
			e.Info, err = r.ReadMap()
		default:
			return false, nil
		}
		return true, err
	})
	if err == nil && !seen {
		err = fmt.Errorf("%w: error condition", ErrMissingField)
	}
	return e, endList(r, end, err)
}

// DecodeState decodes a delivery state (or null, giving nil).
func DecodeState(r *encoding.Reader) (DeliveryState, error) {
	if r.SkipNull() {
		return nil, nil
	}
	code, err := readCode(r)
	if err != nil {
		return nil, err
	}
	n, end, err := r.ReadListHeaderEnd()
	if err != nil {
		return nil, err
	}
	switch code {
	case CodeAccepted:
		return Accepted{}, endList(r, end, r.SkipN(n))
	case CodeReleased:
		return Released{}, endList(r, end, r.SkipN(n))
	case CodeReceived:
		var s Received
		var seen [2]bool
		err := fieldLoop(r, n, func(i int) (bool, error) {
			var err error
			switch i {
			case 0:
				s.SectionNumber, err = r.ReadUint()
			case 1:
				s.SectionOffset, err = r.ReadUlong()
			default:
				return false, nil
			}
			seen[i] = true
			return true, err
		})
		if err == nil && !(seen[0] && seen[1]) {
			err = fmt.Errorf("%w: received section-number or section-offset", ErrMissingField)
		}
		return s, endList(r, end, err)
	case CodeRejected:
		var s Rejected
		err := fieldLoop(r, n, func(i int) (bool, error) {
			if i != 0 {
				return false, nil
			}
			var err error
			s.Error, err = DecodeError(r)
			return true, err
		})
		return s, endList(r, end, err)
	case CodeModified:
		var s Modified
		err := fieldLoop(r, n, func(i int) (bool, error) {
			var err error
			switch i {
			case 0:
				s.DeliveryFailed, err = r.ReadBool()
			case 1:
				s.UndeliverableHere, err = r.ReadBool()
			case 2:
				s.MessageAnnotations, err = r.ReadMap()
			default:
				return false, nil
			}
			return true, err
		})
		return s, endList(r, end, err)
	}
	return nil, fmt.Errorf("%w: delivery state 0x%x", encoding.ErrUnexpected, code)
}

// readAddress reads an address field, which the spec types as "*" and
// peers send as a string or a symbol.
func readAddress(r *encoding.Reader) (string, error) {
	v, err := r.ReadAny()
	if err != nil {
		return "", err
	}
	switch a := v.(type) {
	case string:
		return a, nil
	case encoding.Symbol:
		return string(a), nil
	}
	return "", fmt.Errorf("%w: address of type %T", encoding.ErrUnexpected, v)
}

// DecodeSource decodes a source terminus (or null, giving nil).
func DecodeSource(r *encoding.Reader) (*Source, error) {
	if r.SkipNull() {
		return nil, nil
	}
	n, end, err := describedList(r, CodeSource, "amqp:source:list")
	if err != nil {
		return nil, err
	}
	s := &Source{}
	err = fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			s.Address, err = readAddress(r)
		case 1:
			s.Durable, err = r.ReadUint()
		case 2:
			s.ExpiryPolicy, err = r.ReadSymbol()
		case 3:
			s.Timeout, err = r.ReadUint()
		case 4:
			s.Dynamic, err = r.ReadBool()
		case 5:
			s.DynamicNodeProperties, err = r.ReadMap()
		case 6:
			s.DistributionMode, err = r.ReadSymbol()
		case 7:
			var m map[any]any
			m, err = r.ReadMap()
			if err == nil && len(m) > 0 {
				s.Filter = make(map[encoding.Symbol]any, len(m))
				for k, v := range m {
					switch key := k.(type) {
					case encoding.Symbol:
						s.Filter[key] = v
					case string:
						s.Filter[encoding.Symbol(key)] = v
					default:
						return true, fmt.Errorf("%w: filter key of type %T", encoding.ErrUnexpected, k)
					}
				}
			}
		case 8:
			s.DefaultOutcome, err = r.ReadAny()
		case 9:
			s.Outcomes, err = r.ReadSymbols()
		case 10:
			s.Capabilities, err = r.ReadSymbols()
		default:
			return false, nil
		}
		return true, err
	})
	return s, endList(r, end, err)
}

// DecodeTarget decodes a target terminus (or null, giving nil).
func DecodeTarget(r *encoding.Reader) (*Target, error) {
	if r.SkipNull() {
		return nil, nil
	}
	n, end, err := describedList(r, CodeTarget, "amqp:target:list")
	if err != nil {
		return nil, err
	}
	t := &Target{}
	err = fieldLoop(r, n, func(i int) (bool, error) {
		var err error
		switch i {
		case 0:
			t.Address, err = readAddress(r)
		case 1:
			t.Durable, err = r.ReadUint()
		case 2:
			t.ExpiryPolicy, err = r.ReadSymbol()
		case 3:
			t.Timeout, err = r.ReadUint()
		case 4:
			t.Dynamic, err = r.ReadBool()
		case 5:
			t.DynamicNodeProperties, err = r.ReadMap()
		case 6:
			t.Capabilities, err = r.ReadSymbols()
		default:
			return false, nil
		}
		return true, err
	})
	return t, endList(r, end, err)
}
