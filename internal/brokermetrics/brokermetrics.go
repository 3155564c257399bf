// Package brokermetrics exposes the broker's data plane to Prometheus: what is
// published, consumed and pending, per instance, topic and group; how long
// publishes, fsyncs and deliveries take; what the protocol servers hold and
// refuse; and how the store is doing. It reads the broker's own counters,
// gauges and histograms at each scrape (a prometheus.Collector), so the broker
// keeps no Prometheus state and nothing is counted twice.
//
// Cardinality: labels are instance, topic, group and protocol only, never a
// client, a key or a message (README, "Broker metrics", counts the series).
package brokermetrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/connlimit"
)

// Server is a protocol server whose connections are counted.
type Server interface {
	Connections() connlimit.Stats
}

// Collector reads a broker's figures, and its servers', at each scrape.
type Collector struct {
	b       *broker.Broker
	servers map[string]Server
}

// New returns a collector of b and of the protocol servers, by protocol name
// (http, tcp, grpc); register it with controller-runtime's registry
// (sigs.k8s.io/controller-runtime/pkg/metrics.Registry) to serve it on /metrics.
func New(b *broker.Broker, servers map[string]Server) *Collector {
	return &Collector{b: b, servers: servers}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("orderly_"+name, help, labels, nil)
}

var (
	instanceLabels   = []string{"instance"}
	topicLabels      = []string{"instance", "topic"}
	topicWireLabels  = []string{"instance", "topic", "protocol"}
	groupLabels      = []string{"instance", "group"}
	groupTopicLabels = []string{"instance", "group", "topic"}
	protocolLabels   = []string{"protocol"}

	published      = desc("messages_published_total", "Messages whose publish was acknowledged since the broker started, by the protocol they came in on (a half message counts when sent, a timer message when stored).", topicWireLabels...)
	publishedBytes = desc("message_bytes_published_total", "Bodies' bytes of the messages counted by orderly_messages_published_total.", topicWireLabels...)
	stored         = desc("topic_messages", "Messages the topic holds (published, not yet past retention).", topicLabels...)
	halves         = desc("topic_half_messages", "Transactional half messages of the topic awaiting commit or rollback.", topicLabels...)
	timers         = desc("topic_pending_timers", "Timer (delayed) messages of the topic waiting for their delivery time.", topicLabels...)

	delivered    = desc("group_messages_delivered_total", "Messages of the topic handed to the group for the first time (a pop's first delivery, or pulled) since the broker started.", groupTopicLabels...)
	redelivered  = desc("group_messages_redelivered_total", "Messages of the topic handed to the group again (a pop's redelivery after the invisibility ran out, or sent back by a TCP consumer) since the broker started.", groupTopicLabels...)
	acked        = desc("group_messages_acked_total", "Deliveries of the topic the group acknowledged (pop-style groups) since the broker started.", groupTopicLabels...)
	deadLettered = desc("group_messages_dead_lettered_total", "Messages of the topic moved to the group's dead letters since the broker started.", groupTopicLabels...)
	deadLetters  = desc("group_dead_letters", "Dead letters the group holds.", groupLabels...)
	lastConsume  = desc("group_last_consume_timestamp_seconds", "When the group last consumed (Unix time); absent if never since the broker started.", groupLabels...)
	backlog      = desc("group_backlog_messages", "Messages of the topic the group has not consumed yet, in flight ones included (consumer lag).", groupTopicLabels...)
	inFlight     = desc("group_in_flight_messages", "Messages of the topic handed to the group and not yet acknowledged.", groupTopicLabels...)
	oldest       = desc("group_oldest_unconsumed_age_seconds", "Age of the oldest message of the group's backlog on the topic, since it became deliverable; 0 with no backlog.", groupTopicLabels...)

	publishLatency = desc("publish_duration_seconds", "Time from a publish call to its acknowledgement, the fsync included.", instanceLabels...)
	consumeLatency = desc("consume_latency_seconds", "Time from a message becoming deliverable (stored, or due) to its first delivery to a group (popped or pulled).", instanceLabels...)
	authFailures   = desc("auth_failures_total", "Requests refused for their signature, by the instance whose AccessKey they named; instance=\"\" counts unsigned requests and unknown keys.", instanceLabels...)
	throttled      = desc("throttled_requests_total", "Requests of the instance refused for its quotas (rates, connections, unacknowledged messages) or for its share of the servers' memory.", instanceLabels...)

	connections     = desc("connections", "Connections the protocol's server holds open.", protocolLabels...)
	connectionsGone = desc("connections_refused_total", "Connections the protocol's server turned away past its caps (in all, per address).", protocolLabels...)

	commits        = desc("store_group_commits_total", "Group commits of the write path that reached the disk.")
	commitsN       = desc("store_committed_messages_total", "Messages the group commits carried.")
	syncWait       = desc("store_sync_wait_seconds_total", "Time the write path spent waiting for the disk to sync.")
	syncLatency    = desc("store_sync_duration_seconds", "Time each group commit waited for the disk to sync (the fsync).")
	storeSize      = desc("store_size_bytes", "What the store's files take on disk.")
	writeAmp       = desc("store_write_amplification", "The storage engine's bytes written to tables per byte written to its log, since the broker started.")
	compactionDebt = desc("store_compaction_debt_bytes", "Bytes the storage engine estimates its compactions must rewrite to catch up.")
	diskFree       = desc("store_disk_free_bytes", "Free space of the filesystem holding the store.")
	diskSize       = desc("store_disk_size_bytes", "Size of the filesystem holding the store.")
)

// Describe sends every descriptor the collector uses.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{published, publishedBytes, stored, halves, timers,
		delivered, redelivered, acked, deadLettered, deadLetters, lastConsume, backlog, inFlight, oldest,
		publishLatency, consumeLatency, authFailures, throttled, connections, connectionsGone,
		commits, commitsN, syncWait, syncLatency, storeSize, writeAmp, compactionDebt, diskFree, diskSize} {
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
			for _, w := range t.PublishedBy {
				counter(published, float64(w.Messages), id, t.Name, w.Wire.String())
				counter(publishedBytes, float64(w.Bytes), id, t.Name, w.Wire.String())
			}
			gauge(stored, float64(t.Messages), id, t.Name)
			gauge(timers, float64(t.PendingTimers), id, t.Name)
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
			gauge(deadLetters, float64(s.DeadLetters), id, g.ID)
			if !s.LastConsumeTime.IsZero() {
				gauge(lastConsume, float64(s.LastConsumeTime.UnixMilli())/1000, id, g.ID)
			}
			for _, t := range s.Topics {
				counter(delivered, float64(t.Delivered), id, g.ID, t.Topic)
				counter(redelivered, float64(t.Redelivered), id, g.ID, t.Topic)
				counter(acked, float64(t.Acked), id, g.ID, t.Topic)
				counter(deadLettered, float64(t.DeadLettered), id, g.ID, t.Topic)
				gauge(backlog, float64(t.Backlog), id, g.ID, t.Topic)
				gauge(inFlight, float64(t.InFlight), id, g.ID, t.Topic)
				gauge(oldest, max(0, t.OldestAge.Seconds()), id, g.ID, t.Topic)
			}
		}
		if s, err := c.b.InstanceStats(id); err == nil {
			ch <- histogram(publishLatency, s.PublishLatency, id)
			ch <- histogram(consumeLatency, s.ConsumeLatency, id)
			counter(authFailures, float64(s.AuthFailures), id)
			counter(throttled, float64(s.Throttled), id)
		}
	}
	bs := c.b.Stats()
	counter(authFailures, float64(bs.UnknownKeyRefusals), "")
	ch <- histogram(syncLatency, bs.Sync)
	for name, s := range c.servers {
		cs := s.Connections()
		gauge(connections, float64(cs.Open), name)
		counter(connectionsGone, float64(cs.Refused), name)
	}
	w := c.b.WriteStats()
	counter(commits, float64(w.Commits))
	counter(commitsN, float64(w.Messages))
	counter(syncWait, w.SyncWait.Seconds())
	if s, err := c.b.StorageStats(); err == nil {
		gauge(storeSize, float64(s.Size))
		gauge(writeAmp, s.WriteAmplification)
		gauge(compactionDebt, float64(s.CompactionDebt))
		if s.DiskSize > 0 {
			gauge(diskFree, float64(s.DiskFree))
			gauge(diskSize, float64(s.DiskSize))
		}
	}
}

// histogram turns a broker histogram into a Prometheus one, in seconds.
func histogram(d *prometheus.Desc, h broker.Histogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	for i, b := range h.Bounds {
		// From microseconds, so that a bound prints as its decimal (1.6384, not
		// the 1.6383999999999999 that Duration.Seconds rounds to).
		buckets[float64(b.Microseconds())/1e6] = h.Counts[i]
	}
	return prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets, labels...)
}
