// Package jskv holds what the cluster stores share about JetStream
// key-value buckets beyond the client library.
package jskv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Record is the newest record of a key: a value, or a delete or purge
// marker (Deleted) whose revision a compare-and-set can expect.
type Record struct {
	Value    []byte
	Revision uint64
	Deleted  bool
}

// ErrNoLeader is matched by errors from a read that no stream leader
// answered: the bucket is electing one (a NATS server was lost), so the
// read may be tried again.
var ErrNoLeader = errors.New("jskv: no stream leader answered")

// GetFromLeader reads the newest record of key in bucket from the bucket
// stream's leader. KeyValue.Get is a direct get that any replica may
// answer, and a replica that lags (as after a leader change) returns an
// older revision; the reads that decide a write (is the key there, does
// its etag match, what did the write that beat ours store) must see every
// acknowledged write, which only the leader is sure to have. found is false
// for a key that has no record at all.
func GetFromLeader(ctx context.Context, nc *nats.Conn, bucket, key string) (rec Record, found bool, err error) {
	req, err := json.Marshal(map[string]string{"last_by_subj": "$KV." + bucket + "." + key})
	if err != nil {
		return Record{}, false, err
	}
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) {
			return Record{}, false, fmt.Errorf("%w: %w", ErrNoLeader, err)
		}
		return Record{}, false, err
	}
	var resp struct {
		Message *struct {
			Seq  uint64 `json:"seq"`
			Hdrs []byte `json:"hdrs"`
			Data []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return Record{}, false, fmt.Errorf("message get reply: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound) {
			return Record{}, false, nil
		}
		return Record{}, false, fmt.Errorf("message get: %s (%d)", resp.Error.Description, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return Record{}, false, errors.New("message get: empty reply")
	}
	rec = Record{Value: resp.Message.Data, Revision: resp.Message.Seq}
	if len(resp.Message.Hdrs) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Hdrs)
		if err != nil {
			return Record{}, false, fmt.Errorf("message get: headers: %w", err)
		}
		if op := h.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			rec.Value, rec.Deleted = nil, true
		}
	}
	return rec, true, nil
}

// IsConflict reports a lost compare-and-set: from the key-value API
// (Create of an existing key, Update at an old revision) or from a publish
// with an expected last sequence, whose error code differs between R1 and
// replicated streams.
func IsConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
