package main

import (
	"log/slog"
	"net/http"
	_ "net/http/pprof" // profiles of a running hub, opt-in below
	"os"
)

// pprofEnv names the environment variable that makes `amqphub serve`
// serve net/http/pprof (CPU, heap, allocation and goroutine profiles) on
// the given address, e.g. AMQPHUB_PPROF_ADDR=127.0.0.1:6060. It is how
// BENCHMARKS.md profiles a hub under load; unset, nothing listens.
const pprofEnv = "AMQPHUB_PPROF_ADDR"

func init() {
	addr := os.Getenv(pprofEnv)
	if addr == "" || len(os.Args) < 2 || os.Args[1] != "serve" {
		return
	}
	go func() {
		// http.DefaultServeMux carries only the pprof handlers here: the
		// hub's own HTTPS server uses a mux of its own.
		if err := http.ListenAndServe(addr, nil); err != nil {
			slog.Error("pprof listener stopped", "addr", addr, "err", err)
		}
	}()
}
