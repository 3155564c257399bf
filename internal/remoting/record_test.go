package remoting

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Which timer property sets a message's delivery time, and what a value that is no
// time does.
func TestApplyDeliveryTime(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	ms := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).UnixMilli(), 10) }
	longest := now.Add(math.MaxInt64 / time.Millisecond * time.Millisecond)
	for _, c := range []struct {
		name      string
		props     map[string]string
		level     int
		want      time.Time // zero: at once
		wantLevel int
	}{
		{"ONS absolute", map[string]string{"__STARTDELIVERTIME": ms(time.Minute)}, 0, now.Add(time.Minute), 0},
		{"RocketMQ 5 absolute", map[string]string{"TIMER_DELIVER_MS": ms(time.Second)}, 0, now.Add(time.Second), 0},
		{"delay in seconds", map[string]string{"TIMER_DELAY_SEC": "30"}, 0, now.Add(30 * time.Second), 0},
		{"delay in milliseconds", map[string]string{"TIMER_DELAY_MS": "250"}, 0, now.Add(250 * time.Millisecond), 0},
		{"the absolute time first", map[string]string{"__STARTDELIVERTIME": ms(time.Minute), "TIMER_DELAY_SEC": "1"}, 0, now.Add(time.Minute), 0},
		{"a time past delivers at once", map[string]string{"__STARTDELIVERTIME": ms(-time.Minute)}, 0, time.Time{}, 0},
		{"a negative delay is none", map[string]string{"TIMER_DELAY_SEC": "-5"}, 0, time.Time{}, 0},
		{"a delay beyond any duration is kept at the longest", map[string]string{"TIMER_DELAY_MS": "9223372036854775807"}, 0, longest, 0},
		{"not a number: the next property", map[string]string{"__STARTDELIVERTIME": "soon", "TIMER_DELAY_SEC": "2"}, 0, now.Add(2 * time.Second), 0},
		{"no number at all: the delay level stays", map[string]string{"TIMER_DELAY_SEC": "x"}, 3, time.Time{}, 3},
		{"a time wins over a delay level", map[string]string{"TIMER_DELAY_SEC": "2"}, 3, now.Add(2 * time.Second), 0},
		{"none", map[string]string{"KEYS": "k"}, 2, time.Time{}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := broker.Message{Properties: c.props, DelayLevel: c.level}
			applyDeliveryTime(&m, now)
			if !m.DeliverAt.Equal(c.want) || m.DelayLevel != c.wantLevel {
				t.Fatalf("delivery at %v, level %d; want %v, level %d", m.DeliverAt, m.DelayLevel, c.want, c.wantLevel)
			}
			if len(m.Properties) != len(c.props) {
				t.Fatalf("properties %v changed", m.Properties)
			}
		})
	}
}
