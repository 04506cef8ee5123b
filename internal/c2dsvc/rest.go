package c2dsvc

import (
	"context"
	"errors"
	"net/http"

	"amqphub/internal/auth"
	"amqphub/internal/pebbleutil"
	"amqphub/internal/rest"
)

// PurgeResult is the body of a purge response, as IoT Hub's
// PurgeMessageQueueResult.
type PurgeResult struct {
	TotalMessagesPurged int    `json:"totalMessagesPurged"`
	DeviceID            string `json:"deviceId"`
}

// RegisterREST adds DELETE /devices/{id}/commands (purge a device's queue,
// ServiceConnect) to h.
func (s *Service) RegisterREST(h *rest.Handler) {
	h.Handle("DELETE /devices/{id}/commands", auth.ServiceConnect, s.purge)
	h.AddLiveSource(s.liveCount)
}

// liveCount fills cloudToDeviceMessageCount: the messages waiting in the
// identity's queue, locked or not, as IoT Hub counts them.
func (s *Service) liveCount(ctx context.Context, deviceID, moduleID string, f rest.LiveFields) {
	c, err := s.store.Pending(ctx, queueID(deviceID, moduleID))
	if err != nil {
		return // the document is still worth returning without it
	}
	*f.CloudToDeviceMessageCount = c.Total()
}

func (s *Service) purge(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	id := r.PathValue("id")
	dev, err := s.reg.GetDevice(r.Context(), id)
	if err != nil {
		status, code := rest.StatusFor(err)
		if status == http.StatusInternalServerError {
			s.log.Error("c2d: purge: registry lookup failed", "device", id, "err", err)
			rest.WriteError(w, status, code, "internal error")
			return
		}
		rest.WriteError(w, status, code, err.Error())
		return
	}
	// Messages of a deleted device of the same id are not this device's
	// to purge: they go without feedback.
	if _, err := s.store.DropGenerations(r.Context(), id, dev.GenerationID); err != nil {
		s.storeError(w, id, err)
		return
	}
	n, err := s.store.Purge(r.Context(), id)
	if err != nil {
		s.storeError(w, id, err)
		return
	}
	rest.WriteJSON(w, http.StatusOK, PurgeResult{TotalMessagesPurged: n, DeviceID: id})
}

func (s *Service) storeError(w http.ResponseWriter, id string, err error) {
	if errors.Is(err, pebbleutil.ErrNoSpace) {
		// 503 with Retry-After; the store's guard logged the details.
		rest.WriteError(w, http.StatusServiceUnavailable, rest.CodeServiceUnavailable, rest.NoSpaceMessage)
		return
	}
	s.log.Error("c2d: purge failed", "device", id, "err", err)
	rest.WriteError(w, http.StatusInternalServerError, rest.CodeServerError, "the hub could not purge the queue")
}
