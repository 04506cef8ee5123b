package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"

	goamqp "github.com/Azure/go-amqp"
)

// ehManagement asks the Event-Hub-compatible endpoint's $management node
// about the entity or one partition (the READ operation the Event Hubs
// SDKs use).
type ehManagement struct {
	snd   *goamqp.Sender
	rcv   *goamqp.Receiver
	reply string
}

func newEHManagement(ctx context.Context, sess *goamqp.Session) (*ehManagement, error) {
	reply := fmt.Sprintf("loadgen-mgmt-%016x", rand.Uint64())
	snd, err := sess.NewSender(ctx, "$management", nil)
	if err != nil {
		return nil, fmt.Errorf("loadgen: attach to $management: %w", err)
	}
	rcv, err := sess.NewReceiver(ctx, "$management", &goamqp.ReceiverOptions{TargetAddress: reply, Credit: 10})
	if err != nil {
		snd.Close(ctx)
		return nil, fmt.Errorf("loadgen: attach the $management reply link: %w", err)
	}
	return &ehManagement{snd: snd, rcv: rcv, reply: reply}, nil
}

func (m *ehManagement) close(ctx context.Context) {
	m.snd.Close(ctx)
	m.rcv.Close(ctx)
}

// read sends one READ request and returns the reply body.
func (m *ehManagement) read(ctx context.Context, typ, entity, partition string) (map[string]any, error) {
	id := fmt.Sprintf("%016x", rand.Uint64())
	props := map[string]any{"operation": "READ", "type": typ, "name": entity}
	if partition != "" {
		props["partition"] = partition
	}
	req := &goamqp.Message{
		Properties:            &goamqp.MessageProperties{MessageID: id, ReplyTo: &m.reply},
		ApplicationProperties: props,
		Value:                 nil,
	}
	if err := m.snd.Send(ctx, req, nil); err != nil {
		return nil, fmt.Errorf("loadgen: $management request: %w", err)
	}
	for {
		resp, err := m.rcv.Receive(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("loadgen: $management reply: %w", err)
		}
		m.rcv.AcceptMessage(ctx, resp)
		if resp.Properties == nil || resp.Properties.CorrelationID != id {
			continue
		}
		status, _ := resp.ApplicationProperties["status-code"].(int32)
		if status != 200 {
			desc, _ := resp.ApplicationProperties["status-description"].(string)
			return nil, fmt.Errorf("loadgen: $management READ %s: status %d: %s", typ, status, desc)
		}
		body, ok := resp.Value.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("loadgen: $management READ %s: reply body is %T, not a map", typ, resp.Value)
		}
		return body, nil
	}
}

// partitionIDs returns the entity's partition ids.
func (m *ehManagement) partitionIDs(ctx context.Context, entity string) ([]string, error) {
	body, err := m.read(ctx, "com.microsoft:eventhub", entity, "")
	if err != nil {
		return nil, err
	}
	ids, ok := body["partition_ids"].([]string)
	if !ok || len(ids) == 0 {
		return nil, fmt.Errorf("loadgen: $management: partition_ids is %T %v", body["partition_ids"], body["partition_ids"])
	}
	return ids, nil
}

// lastSequence returns the sequence number of the partition's last event
// (-1 when it never held one).
func (m *ehManagement) lastSequence(ctx context.Context, entity, partition string) (int64, error) {
	body, err := m.read(ctx, "com.microsoft:partition", entity, partition)
	if err != nil {
		return 0, err
	}
	switch v := body["last_enqueued_sequence_number"].(type) {
	case int64:
		return v, nil
	case int32:
		return int64(v), nil
	case string:
		return strconv.ParseInt(v, 10, 64)
	}
	return 0, errors.New("loadgen: $management: partition info has no last_enqueued_sequence_number")
}

// partitionAddress is the address of a partition reader.
func partitionAddress(entity, group, partition string) string {
	return entity + "/ConsumerGroups/" + group + "/Partitions/" + partition
}
