package rest

import (
	"fmt"
	"net/http"
	"testing"

	"amqphub/internal/pebbleutil"
	"amqphub/internal/registry"
)

func TestStatusFor(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   ErrorCode
	}{
		{fmt.Errorf("get: %w", registry.ErrDeviceNotFound), http.StatusNotFound, CodeDeviceNotFound},
		{fmt.Errorf("create: %w", registry.ErrDeviceAlreadyExists), http.StatusConflict, CodeDeviceAlreadyExists},
		{fmt.Errorf("replace: %w", registry.ErrPreconditionFailed), http.StatusPreconditionFailed, CodePreconditionFailed},
		{fmt.Errorf("write: %w", registry.ErrUnavailable), http.StatusServiceUnavailable, CodeServiceUnavailable},
		{fmt.Errorf("write: %w", pebbleutil.ErrNoSpace), http.StatusServiceUnavailable, CodeServiceUnavailable},
		{fmt.Errorf("something else"), http.StatusInternalServerError, CodeServerError},
	}
	for _, tt := range tests {
		status, code := StatusFor(tt.err)
		if status != tt.status || code != tt.code {
			t.Errorf("StatusFor(%v) = %d %s, want %d %s", tt.err, status, code, tt.status, tt.code)
		}
	}
}
