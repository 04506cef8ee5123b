package seglog

import (
	"testing"
	"time"

	"amqphub/store/partlog"
	"amqphub/store/partlog/partlogtest"
)

func TestConformance(t *testing.T) {
	partlogtest.Run(t, func(t *testing.T, partitions int) partlog.Log {
		l, err := Open(t.TempDir(), Options{Partitions: partitions, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	})
}

// TestConformanceSmallSegments runs the suite with tiny segments, a tiny
// queue and a batch window, so that rolls, back-pressure and timed batches
// happen all the time.
func TestConformanceSmallSegments(t *testing.T) {
	partlogtest.Run(t, func(t *testing.T, partitions int) partlog.Log {
		l, err := Open(t.TempDir(), Options{
			Partitions:    partitions,
			SegmentSize:   MinSegmentSize,
			MaxQueueBytes: MinMaxQueueBytes,
			IndexInterval: 64,
			BatchWindow:   200 * time.Microsecond,
			Logger:        testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l
	})
}
