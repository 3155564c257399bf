// Package brokermetrics exposes the broker's data plane to Prometheus: what is
// published, consumed and pending, per instance, topic and group, and how the
// write path and the store are doing. It reads the broker's own counters and
// gauges at each scrape (a prometheus.Collector), so the broker keeps no
// Prometheus state and nothing is counted twice.
//
// Cardinality: labels are instance, topic and group only, never a client or a
// message. An instance with N topics and M groups costs 3 series per topic
// (published messages and bytes, messages held; a transactional topic 1 more,
// its half messages), 6 per group (delivered, redelivered, acknowledged,
// dead-lettered, dead letters held, last consume time) and 2 per group and topic
// it consumes (backlog, in flight): at most 4N + 6M + 2NM. The write path adds 3
// series for the process.
package brokermetrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderly-dev/orderly/internal/broker"
)

// Collector reads a broker's figures at each scrape.
type Collector struct {
	b *broker.Broker
}

// New returns a collector of b; register it with controller-runtime's registry
// (sigs.k8s.io/controller-runtime/pkg/metrics.Registry) to serve it on /metrics.
func New(b *broker.Broker) *Collector { return &Collector{b: b} }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("orderly_"+name, help, labels, nil)
}

var (
	topicLabels      = []string{"instance", "topic"}
	groupLabels      = []string{"instance", "group"}
	groupTopicLabels = []string{"instance", "group", "topic"}

	published      = desc("messages_published_total", "Messages that entered the topic's queues since it was created (a half message when committed, a timer when due; retries and dead letters are on their group's system topics).", topicLabels...)
	publishedBytes = desc("message_bytes_published_total", "Stored bytes of the messages published on the topic since it was created.", topicLabels...)
	stored         = desc("topic_messages", "Messages the topic holds (published, not yet past retention).", topicLabels...)
	halves         = desc("topic_half_messages", "Transactional half messages of the topic awaiting commit or rollback.", topicLabels...)

	delivered    = desc("group_messages_delivered_total", "Messages handed to the group for the first time (a pop's first delivery, or pulled) since the broker started.", groupLabels...)
	redelivered  = desc("group_messages_redelivered_total", "Messages handed to the group again (a pop's redelivery after the invisibility ran out, or sent back by a TCP consumer) since the broker started.", groupLabels...)
	acked        = desc("group_messages_acked_total", "Deliveries the group acknowledged (pop-style groups) since the broker started.", groupLabels...)
	deadLettered = desc("group_messages_dead_lettered_total", "Messages moved to the group's dead letters since the broker started.", groupLabels...)
	deadLetters  = desc("group_dead_letters", "Dead letters the group holds.", groupLabels...)
	lastConsume  = desc("group_last_consume_timestamp_seconds", "When the group last consumed (Unix time); absent if never since the broker started.", groupLabels...)
	backlog      = desc("group_backlog_messages", "Messages of the topic the group has not consumed yet, in flight ones included (consumer lag).", groupTopicLabels...)
	inFlight     = desc("group_in_flight_messages", "Messages of the topic handed to the group and not yet acknowledged.", groupTopicLabels...)

	commits  = desc("store_group_commits_total", "Group commits of the write path that reached the disk.")
	commitsN = desc("store_committed_messages_total", "Messages the group commits carried.")
	syncWait = desc("store_sync_wait_seconds_total", "Time the write path spent waiting for the disk to sync.")
)

// Describe sends every descriptor the collector uses.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{published, publishedBytes, stored, halves, delivered, redelivered, acked,
		deadLettered, deadLetters, lastConsume, backlog, inFlight, commits, commitsN, syncWait} {
		ch <- d
	}
}

// Collect reads the broker's figures. An instance, topic or group deleted while
// it reads is left out of this scrape.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, inst := range c.b.Instances() {
		id := inst.ID
		topics, err := c.b.Topics(id)
		if err != nil {
			continue
		}
		pending := c.b.PendingHalfMessages(id)
		for _, t := range topics {
			if t.System {
				continue
			}
			counter(published, float64(t.Published), id, t.Name)
			counter(publishedBytes, float64(t.PublishedBytes), id, t.Name)
			gauge(stored, float64(t.Messages), id, t.Name)
			if t.Type == broker.Transactional {
				gauge(halves, float64(pending[t.Name]), id, t.Name)
			}
		}
		groups, err := c.b.Groups(id)
		if err != nil {
			continue
		}
		for _, g := range groups {
			s, err := c.b.GroupStats(id, g.ID)
			if err != nil {
				continue
			}
			counter(delivered, float64(s.Delivered), id, g.ID)
			counter(redelivered, float64(s.Redelivered), id, g.ID)
			counter(acked, float64(s.Acked), id, g.ID)
			counter(deadLettered, float64(s.DeadLettered), id, g.ID)
			gauge(deadLetters, float64(s.DeadLetters), id, g.ID)
			if !s.LastConsumeTime.IsZero() {
				gauge(lastConsume, float64(s.LastConsumeTime.UnixMilli())/1000, id, g.ID)
			}
			for _, t := range s.Topics {
				gauge(backlog, float64(t.Backlog), id, g.ID, t.Topic)
				gauge(inFlight, float64(t.InFlight), id, g.ID, t.Topic)
			}
		}
	}
	w := c.b.WriteStats()
	counter(commits, float64(w.Commits))
	counter(commitsN, float64(w.Messages))
	counter(syncWait, w.SyncWait.Seconds())
}
