package pebbleutil

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Logger adapts a *slog.Logger to Pebble's Logger interface (Infof,
// Errorf, Fatalf). Routine messages go to debug level, errors to error
// level, each with the component attribute.
type Logger struct {
	log       *slog.Logger
	component string
	// exit ends the process after a fatal error and once makes it happen
	// once; tests replace both.
	exit func(code int)
	once *sync.Once
}

// NewLogger returns a Logger for component (e.g. "registry"); a nil log
// means slog.Default().
func NewLogger(log *slog.Logger, component string) *Logger {
	if log == nil {
		log = slog.Default()
	}
	return &Logger{log: log, component: component, exit: os.Exit, once: &fatalOnce}
}

// Infof implements pebble.Logger.
func (l *Logger) Infof(format string, args ...any) {
	l.log.Debug("pebble: "+fmt.Sprintf(format, args...), "component", l.component)
}

// Errorf implements pebble.Logger.
func (l *Logger) Errorf(format string, args ...any) {
	l.log.Error("pebble: "+fmt.Sprintf(format, args...), "component", l.component)
}

// fatalOnce makes concurrent fatal errors (several goroutines of one
// database, or several databases failing on the same disk) log one line
// and exit once.
var fatalOnce sync.Once

// Fatalf implements pebble.Logger. It does not return: Pebble calls it
// when its state can no longer be trusted (a WAL or MANIFEST write failed
// halfway, an invariant broke) and carries on as if the call never
// returned, so returning would risk corrupting the database. It logs the
// cause once and exits the process with status 70 (EX_SOFTWARE); a restart
// recovers the database from its WAL. The stores' Guard exists so that a
// full disk never gets here.
func (l *Logger) Fatalf(format string, args ...any) {
	l.once.Do(func() {
		l.log.Error("pebble: fatal error; the hub exits, restart it once the cause is fixed: "+fmt.Sprintf(format, args...),
			"component", l.component)
		l.exit(70)
	})
	// Another goroutine is exiting the process; never return.
	select {}
}
