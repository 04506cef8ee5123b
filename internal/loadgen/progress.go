package loadgen

import (
	"fmt"
	"io"
	"os"
	"time"
)

// startProgress prints line() every interval to w until the returned stop
// function is called. On a terminal the line is rewritten in place;
// otherwise (a pipe, a log file) each update is its own line. A nil w
// prints nothing.
func startProgress(w io.Writer, interval time.Duration, line func(elapsed time.Duration) string) (stop func()) {
	if w == nil {
		return func() {}
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	start := time.Now()
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				if tty {
					fmt.Fprintln(w)
				}
				return
			case <-t.C:
				s := line(time.Since(start))
				if tty {
					fmt.Fprintf(w, "\r\x1b[K%s", s)
				} else {
					fmt.Fprintln(w, s)
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
