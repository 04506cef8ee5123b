package frames

import (
	"time"

	"amqphub/amqp/encoding"
)

// fields writes the fields of a described list, dropping trailing nulls so
// frames stay as small as the spec allows.
type fields struct {
	b         []byte
	mark      int
	n         int
	keepLen   int
	keepCount int
	err       error
}

func begin(b []byte, code uint64) *fields {
	b = encoding.AppendDescriptor(b, code)
	b, mark := encoding.BeginList(b)
	return &fields{b: b, mark: mark, keepLen: len(b)}
}

func (f *fields) kept() { f.n++; f.keepLen, f.keepCount = len(f.b), f.n }
func (f *fields) null() { f.b = encoding.AppendNull(f.b); f.n++ }

func (f *fields) end() ([]byte, error) {
	if f.err != nil {
		return nil, f.err
	}
	return encoding.EndList(f.b[:f.keepLen], f.mark, f.keepCount), nil
}

func (f *fields) str(s string, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendString(f.b, s)
	f.kept()
}

func (f *fields) sym(s encoding.Symbol) {
	if s == "" {
		f.null()
		return
	}
	f.b = encoding.AppendSymbol(f.b, s)
	f.kept()
}

func (f *fields) syms(s []encoding.Symbol) {
	if len(s) == 0 {
		f.null()
		return
	}
	f.b = encoding.AppendSymbols(f.b, s)
	f.kept()
}

func (f *fields) uint(v uint32, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendUint(f.b, v)
	f.kept()
}

func (f *fields) ulong(v uint64, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendUlong(f.b, v)
	f.kept()
}

func (f *fields) ushort(v uint16, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendUshort(f.b, v)
	f.kept()
}

func (f *fields) ubyte(v uint8, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendUbyte(f.b, v)
	f.kept()
}

func (f *fields) boolean(v bool, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendBool(f.b, v)
	f.kept()
}

func (f *fields) binary(v []byte, present bool) {
	if !present {
		f.null()
		return
	}
	f.b = encoding.AppendBinary(f.b, v)
	f.kept()
}

func (f *fields) timestamp(t time.Time) {
	if t.IsZero() {
		f.null()
		return
	}
	f.b = encoding.AppendTimestamp(f.b, t)
	f.kept()
}

func (f *fields) any(v any) {
	if v == nil || f.err != nil {
		f.null()
		return
	}
	f.b, f.err = encoding.AppendAny(f.b, v)
	f.kept()
}

func (f *fields) fieldsMap(m map[any]any) {
	if m == nil {
		f.null()
		return
	}
	f.any(m)
}

func (f *fields) marshal(m encoding.Marshaler, present bool) {
	if !present || f.err != nil {
		f.null()
		return
	}
	f.b, f.err = m.AppendAMQP(f.b)
	f.kept()
}

// AppendAMQP encodes the performative.
func (o *Open) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeOpen)
	f.str(o.ContainerID, true)
	f.str(o.Hostname, o.Hostname != "")
	f.uint(o.MaxFrameSize, o.MaxFrameSize != 0 && o.MaxFrameSize != 0xFFFFFFFF)
	f.ushort(o.ChannelMax, o.ChannelMax != 0xFFFF)
	f.uint(uint32(o.IdleTimeout/time.Millisecond), o.IdleTimeout > 0)
	f.syms(o.OutgoingLocales)
	f.syms(o.IncomingLocales)
	f.syms(o.OfferedCapabilities)
	f.syms(o.DesiredCapabilities)
	f.fieldsMap(o.Properties)
	return f.end()
}

// AppendAMQP encodes the performative.
func (p *Begin) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeBegin)
	f.ushort(p.RemoteChannel, p.HasRemoteChannel)
	f.uint(p.NextOutgoingID, true)
	f.uint(p.IncomingWindow, true)
	f.uint(p.OutgoingWindow, true)
	f.uint(p.HandleMax, p.HandleMax != 0xFFFFFFFF)
	f.syms(p.OfferedCapabilities)
	f.syms(p.DesiredCapabilities)
	f.fieldsMap(p.Properties)
	return f.end()
}

// AppendAMQP encodes the performative.
func (a *Attach) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeAttach)
	f.str(a.Name, true)
	f.uint(a.Handle, true)
	f.boolean(bool(a.Role), true)
	f.ubyte(uint8(a.SenderSettleMode), a.SenderSettleMode != SenderSettleMixed)
	f.ubyte(uint8(a.ReceiverSettleMode), a.ReceiverSettleMode != ReceiverSettleFirst)
	f.marshal(a.Source, a.Source != nil)
	f.marshal(a.Target, a.Target != nil)
	f.fieldsMap(a.Unsettled)
	f.boolean(a.IncompleteUnsettled, a.IncompleteUnsettled)
	f.uint(a.InitialDeliveryCount, a.HasInitialDelivery)
	f.ulong(a.MaxMessageSize, a.MaxMessageSize != 0)
	f.syms(a.OfferedCapabilities)
	f.syms(a.DesiredCapabilities)
	f.fieldsMap(a.Properties)
	return f.end()
}

// AppendAMQP encodes the performative.
func (p *Flow) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeFlow)
	f.uint(p.NextIncomingID, p.HasNextIncomingID)
	f.uint(p.IncomingWindow, true)
	f.uint(p.NextOutgoingID, true)
	f.uint(p.OutgoingWindow, true)
	f.uint(p.Handle, p.HasHandle)
	f.uint(p.DeliveryCount, p.HasDeliveryCount)
	f.uint(p.LinkCredit, p.HasLinkCredit)
	f.uint(p.Available, p.HasAvailable)
	f.boolean(p.Drain, p.Drain)
	f.boolean(p.Echo, p.Echo)
	f.fieldsMap(p.Properties)
	return f.end()
}

// AppendAMQP encodes the performative (not the payload).
func (t *Transfer) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeTransfer)
	f.uint(t.Handle, true)
	f.uint(t.DeliveryID, t.HasDeliveryID)
	f.binary(t.DeliveryTag, t.DeliveryTag != nil)
	f.uint(t.MessageFormat, t.HasMessageFormat)
	f.boolean(t.Settled, t.HasSettled || t.Settled)
	f.boolean(t.More, t.More)
	f.ubyte(uint8(t.ReceiverSettleMode), t.HasRcvSettleMode)
	f.marshal(t.State, t.State != nil)
	f.boolean(t.Resume, t.Resume)
	f.boolean(t.Aborted, t.Aborted)
	f.boolean(t.Batchable, t.Batchable)
	return f.end()
}

// AppendAMQP encodes the performative.
func (d *Disposition) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeDisposition)
	f.boolean(bool(d.Role), true)
	f.uint(d.First, true)
	f.uint(d.Last, d.HasLast && d.Last != d.First)
	f.boolean(d.Settled, d.Settled)
	f.marshal(d.State, d.State != nil)
	f.boolean(d.Batchable, d.Batchable)
	return f.end()
}

// AppendAMQP encodes the performative.
func (d *Detach) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeDetach)
	f.uint(d.Handle, true)
	f.boolean(d.Closed, d.Closed)
	f.marshal(d.Error, d.Error != nil)
	return f.end()
}

// AppendAMQP encodes the performative.
func (e *End) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeEnd)
	f.marshal(e.Error, e.Error != nil)
	return f.end()
}

// AppendAMQP encodes the performative.
func (c *Close) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeClose)
	f.marshal(c.Error, c.Error != nil)
	return f.end()
}

// AppendAMQP encodes the error.
func (e *Error) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeError)
	f.b = encoding.AppendSymbol(f.b, e.Condition)
	f.kept()
	f.str(e.Description, e.Description != "")
	f.fieldsMap(e.Info)
	return f.end()
}

// AppendAMQP encodes the SASL frame body.
func (m *SASLMechanisms) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSASLMechanisms)
	f.b = encoding.AppendSymbols(f.b, m.Mechanisms)
	f.kept()
	return f.end()
}

// AppendAMQP encodes the SASL frame body.
func (m *SASLInit) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSASLInit)
	f.b = encoding.AppendSymbol(f.b, m.Mechanism)
	f.kept()
	f.binary(m.InitialResponse, m.InitialResponse != nil)
	f.str(m.Hostname, m.Hostname != "")
	return f.end()
}

// AppendAMQP encodes the SASL frame body.
func (m *SASLChallenge) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSASLChallenge)
	f.binary(m.Challenge, true)
	return f.end()
}

// AppendAMQP encodes the SASL frame body.
func (m *SASLResponse) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSASLResponse)
	f.binary(m.Response, true)
	return f.end()
}

// AppendAMQP encodes the SASL frame body.
func (m *SASLOutcome) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSASLOutcome)
	f.ubyte(uint8(m.Result), true)
	f.binary(m.AdditionalData, m.AdditionalData != nil)
	return f.end()
}

// AppendAMQP encodes the delivery state.
func (s Received) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeReceived)
	f.uint(s.SectionNumber, true)
	f.ulong(s.SectionOffset, true)
	return f.end()
}

// AppendAMQP encodes the outcome.
func (Accepted) AppendAMQP(b []byte) ([]byte, error) {
	return append(encoding.AppendDescriptor(b, CodeAccepted), encoding.TypeList0), nil
}

// AppendAMQP encodes the outcome.
func (s Rejected) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeRejected)
	f.marshal(s.Error, s.Error != nil)
	return f.end()
}

// AppendAMQP encodes the outcome.
func (Released) AppendAMQP(b []byte) ([]byte, error) {
	return append(encoding.AppendDescriptor(b, CodeReleased), encoding.TypeList0), nil
}

// AppendAMQP encodes the outcome.
func (s Modified) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeModified)
	f.boolean(s.DeliveryFailed, s.DeliveryFailed)
	f.boolean(s.UndeliverableHere, s.UndeliverableHere)
	f.fieldsMap(s.MessageAnnotations)
	return f.end()
}

// AppendAMQP encodes the source terminus.
func (s *Source) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeSource)
	f.str(s.Address, s.Address != "")
	f.uint(s.Durable, s.Durable != 0)
	f.sym(s.ExpiryPolicy)
	f.uint(s.Timeout, s.Timeout != 0)
	f.boolean(s.Dynamic, s.Dynamic)
	f.fieldsMap(s.DynamicNodeProperties)
	f.sym(s.DistributionMode)
	if len(s.Filter) > 0 {
		m := make(map[any]any, len(s.Filter))
		for k, v := range s.Filter {
			m[k] = v
		}
		f.any(m)
	} else {
		f.null()
	}
	f.any(s.DefaultOutcome)
	f.syms(s.Outcomes)
	f.syms(s.Capabilities)
	return f.end()
}

// AppendAMQP encodes the target terminus.
func (t *Target) AppendAMQP(b []byte) ([]byte, error) {
	f := begin(b, CodeTarget)
	f.str(t.Address, t.Address != "")
	f.uint(t.Durable, t.Durable != 0)
	f.sym(t.ExpiryPolicy)
	f.uint(t.Timeout, t.Timeout != 0)
	f.boolean(t.Dynamic, t.Dynamic)
	f.fieldsMap(t.DynamicNodeProperties)
	f.syms(t.Capabilities)
	return f.end()
}
