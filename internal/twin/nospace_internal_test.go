package twin

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"amqphub/internal/pebbleutil"
	"amqphub/internal/rest"
)

// TestRESTNoSpace: a twin write refused for lack of disk space is 503
// ServiceUnavailable in IoT Hub's error shape, with Retry-After, without
// the server's paths.
func TestRESTNoSpace(t *testing.T) {
	e := &Endpoint{log: slog.New(slog.DiscardHandler)}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("PATCH", "/twins/d1", nil)
	e.writeError(rec, req, fmt.Errorf("write twin d1: %w: 10 bytes free in /secret/dir, reserve 5", pebbleutil.ErrNoSpace))
	body := rec.Body.String()
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" ||
		rec.Header().Get("iothub-errorcode") != string(rest.CodeServiceUnavailable) ||
		!strings.Contains(body, "ErrorCode:ServiceUnavailable;insufficient disk space") || strings.Contains(body, "/secret/dir") {
		t.Fatalf("response %d %v %s", rec.Code, rec.Header(), body)
	}
}
