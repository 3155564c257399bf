package broker

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MessageType is what a topic carries; it cannot change after creation.
type MessageType string

const (
	// Normal topics carry normal and timer messages, delivered in no particular order.
	Normal MessageType = "Normal"
	// Ordered topics deliver each queue's messages strictly in publish order; a
	// message's sharding key picks its queue. One queue is global order.
	Ordered MessageType = "Ordered"
	// Transactional topics carry half messages that become visible on commit.
	Transactional MessageType = "Transactional"
)

// Topic limits and defaults.
const (
	DefaultQueues    = 8
	MaxQueues        = 256
	DefaultRetention = 72 * time.Hour
	// MaxTopicNameLength is RocketMQ's limit.
	MaxTopicNameLength = 127
)

// topicNamePattern is RocketMQ's topic-name rule. '%' appears in system topic names
// (%RETRY%group, %DLQ%group) and '|' in some legacy ones.
var topicNamePattern = regexp.MustCompile(`^[%|a-zA-Z0-9_-]+$`)

// TopicConfig is the declared state of a topic.
type TopicConfig struct {
	Name string
	Type MessageType
	// Queues is the number of queues (partitions); it may grow, never shrink.
	Queues int
	// Retention is how long messages stay deliverable; zero means DefaultRetention.
	Retention time.Duration
	// Owner identifies the declarer, as for instances.
	Owner string
}

// TopicInfo describes a topic with its statistics.
type TopicInfo struct {
	Name      string
	Type      MessageType
	Queues    int
	Retention time.Duration
	Owner     string
	// System is true for a group's retry and dead-letter topics.
	System bool
	// Messages is how many messages are deliverable (published and not yet past
	// retention), summed over the queues; Bytes their stored size.
	Messages int64
	Bytes    int64
	// Published and PublishedBytes count every message stored on the topic since
	// it was created (offsets are never reused), and their stored size.
	Published      uint64
	PublishedBytes uint64
	// PublishedBy counts the publishes acknowledged since the broker opened, by
	// the wire they came in on (wires with none left out), bodies' bytes with
	// them; a half message counts when sent, a timer message when stored.
	PublishedBy []WireCount
	// PendingTimers is how many timer messages wait for their delivery time.
	PendingTimers int64
}

// topic is one topic. Its configuration fields are guarded by Broker.mu.
type topic struct {
	id        uint32
	instance  string
	name      string
	typ       MessageType
	retention time.Duration
	owner     string
	queues    []*queue
	// system topics (a group's retry and dead-letter topics) belong to the broker:
	// producers cannot publish to them and they go with their group.
	system  bool
	deleted atomic.Bool
	rr      atomic.Uint32 // round-robin queue choice
	// published counts the application's publishes by wire since the broker
	// opened, bodies' bytes with them (observe.go).
	published wireCounts
	// stats are its instance's (observe.go).
	stats *instanceStats
	// timers counts its timer messages not yet due, as stored (the syncer's,
	// once durable; counted from the store at recovery).
	timers atomic.Int64

	// notify is closed, and replaced, whenever messages become deliverable, to wake
	// every long poll on the topic at once.
	notifyMu sync.Mutex
	notify   chan struct{}
}

// queue is one queue of a topic.
type queue struct {
	topic *topic
	id    int
	// next is the next offset to hand out. Only the writer goroutine touches it after
	// recovery.
	next uint64
	// durable: every offset below is on disk and may be read. The syncer advances it
	// in order, so readers never see a message that a crash could take back.
	durable atomic.Uint64
	// min: offsets below are gone (retention).
	min atomic.Uint64
	// holes counts entries at or above min that were removed (re-driven dead
	// letters), so the queue holds durable-min-holes messages.
	holes atomic.Uint64
	// bytes counts the bytes of the queue's records (the writer's), durableBytes as
	// of the durable watermark, and reclaimed those retention removed.
	bytes        uint64
	durableBytes atomic.Uint64
	reclaimed    atomic.Uint64
	// trim serializes what removes entries from the queue (retention, re-drives),
	// which all write its queueTrim.
	trim sync.Mutex
}

// messages is how many messages the queue holds.
func (q *queue) messages() int64 {
	return int64(q.durable.Load() - q.min.Load() - q.holes.Load())
}

// trimState is what the queue's 'm' key holds. q.trim should be held.
func (q *queue) trimState() queueTrim {
	return queueTrim{min: q.min.Load(), reclaimed: q.reclaimed.Load(), holes: q.holes.Load()}
}

type topicMeta struct {
	Instance  string        `json:"instance"`
	Name      string        `json:"name"`
	Type      MessageType   `json:"type"`
	Queues    int           `json:"queues"`
	Retention time.Duration `json:"retention"`
	Owner     string        `json:"owner"`
	System    bool          `json:"system,omitempty"`
}

func validateTopicConfig(cfg *TopicConfig) error {
	if strings.HasPrefix(cfg.Name, RetryTopicPrefix) || strings.HasPrefix(cfg.Name, DLQTopicPrefix) {
		return fmt.Errorf("%w: %q is a system topic name; retry and dead-letter topics come with their group", ErrInvalidArgument, cfg.Name)
	}
	if cfg.Name == "" || len(cfg.Name) > MaxTopicNameLength || !topicNamePattern.MatchString(cfg.Name) {
		return fmt.Errorf("%w: topic name %q must be 1 to %d characters of [%%|a-zA-Z0-9_-]", ErrInvalidArgument, cfg.Name, MaxTopicNameLength)
	}
	switch cfg.Type {
	case Normal, Ordered, Transactional:
	case "":
		cfg.Type = Normal
	default:
		return fmt.Errorf("%w: message type %q is not Normal, Ordered or Transactional", ErrInvalidArgument, cfg.Type)
	}
	if cfg.Queues == 0 {
		cfg.Queues = DefaultQueues
	}
	if cfg.Queues < 1 || cfg.Queues > MaxQueues {
		return fmt.Errorf("%w: %d queues; a topic has 1 to %d", ErrInvalidArgument, cfg.Queues, MaxQueues)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Retention < time.Minute {
		return fmt.Errorf("%w: retention %v is under a minute", ErrInvalidArgument, cfg.Retention)
	}
	return nil
}

// EnsureTopic creates the topic or brings it to cfg. It is idempotent. The type
// cannot change and the queue count cannot shrink (ErrImmutable); a topic declared
// by another owner is refused with a *ConflictError.
func (b *Broker) EnsureTopic(instanceID string, cfg TopicConfig) (TopicInfo, error) {
	if err := validateTopicConfig(&cfg); err != nil {
		return TopicInfo{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return TopicInfo{}, err
	}
	return b.ensureTopicLocked(inst, cfg, false)
}

// ensureTopicLocked creates or updates a topic of inst. b.mu should be held.
func (b *Broker) ensureTopicLocked(inst *instance, cfg TopicConfig, system bool) (TopicInfo, error) {
	instanceID := inst.id
	if n := wireNameLength(instanceID, cfg.Name); n > MaxWireNameLength {
		return TopicInfo{}, fmt.Errorf("%w: topic %q is %d bytes with the instance prefix %q%%; RocketMQ clients take at most %d",
			ErrInvalidArgument, cfg.Name, n, instanceID, MaxWireNameLength)
	}
	t, exists := inst.topics[cfg.Name]
	if !exists && !system {
		if limit := inst.quota.get().Topics; inst.userTopics() >= limit {
			return TopicInfo{}, fmt.Errorf("%w: instance %q holds its limit of %d topics", ErrQuotaExceeded, instanceID, limit)
		}
	}
	if exists {
		if t.owner != cfg.Owner && t.owner != AutoCreatedOwner {
			return TopicInfo{}, &ConflictError{Kind: "topic", Name: cfg.Name, Owner: t.owner}
		}
		if t.typ != cfg.Type {
			return TopicInfo{}, fmt.Errorf("%w: topic %q is %s and cannot become %s", ErrImmutable, cfg.Name, t.typ, cfg.Type)
		}
		if cfg.Queues < len(t.queues) {
			return TopicInfo{}, fmt.Errorf("%w: topic %q has %d queues and cannot shrink to %d", ErrImmutable, cfg.Name, len(t.queues), cfg.Queues)
		}
		if cfg.Queues == len(t.queues) && cfg.Retention == t.retention && cfg.Owner == t.owner {
			return t.info(), nil
		}
	} else {
		t = &topic{id: b.counters.NextTopicID, instance: instanceID, name: cfg.Name, typ: cfg.Type, owner: cfg.Owner,
			system: system, notify: make(chan struct{}), stats: b.instances[instanceID].stats}
	}
	w := b.store.newBatch()
	c := b.counters
	if !exists {
		c.NextTopicID++
		if err := b.setMeta(w, metaCounter, "", c); err != nil {
			return TopicInfo{}, err
		}
	}
	meta := topicMeta{Instance: instanceID, Name: cfg.Name, Type: cfg.Type, Queues: cfg.Queues, Retention: cfg.Retention,
		Owner: cfg.Owner, System: system}
	if err := b.setMeta(w, metaTopic, topicIDString(t.id), meta); err != nil {
		return TopicInfo{}, err
	}
	if err := b.store.commit(w); err != nil {
		return TopicInfo{}, fmt.Errorf("failed to store topic %q: %w", cfg.Name, err)
	}
	b.counters = c
	// New queues start empty; existing ones keep their messages. Growing a topic
	// moves sharding keys to other queues, as it does in RocketMQ.
	for i := len(t.queues); i < cfg.Queues; i++ {
		t.queues = append(t.queues, &queue{topic: t, id: i})
	}
	t.retention = cfg.Retention
	t.owner = cfg.Owner // a declarer adopts an auto-created topic
	if !exists {
		inst.topics[cfg.Name] = t
		b.topicsByID[t.id] = t
	}
	return t.info(), nil
}

// DeleteTopic removes the topic and its messages, if owner declared it. Deleting a
// topic that does not exist, or that another owner declared, succeeds without effect.
func (b *Broker) DeleteTopic(instanceID, name, owner string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		if b.closed {
			return err
		}
		return nil
	}
	t, ok := inst.topics[name]
	if !ok || t.owner != owner {
		return nil
	}
	w := b.store.newBatch()
	b.dropTopicLocked(w, t)
	if err := b.store.commit(w); err != nil {
		return fmt.Errorf("failed to delete topic %q: %w", name, err)
	}
	b.kickReaper()
	return nil
}

// dropTopicLocked removes t from the registries and adds to w the deletion of its
// metadata and of the groups' progress on it, with a marker for the reaper, which
// removes its messages, timers and half messages in the background. Call
// kickReaper once w is committed. b.mu should be held.
func (b *Broker) dropTopicLocked(w writeBatch, t *topic) {
	t.deleted.Store(true)
	_ = b.setMeta(w, metaReaping, topicIDString(t.id), reapingMeta{Queues: len(t.queues)})
	w.delete(metaKey(metaTopic, topicIDString(t.id)))
	for _, g := range b.groupsByID {
		g.forgetTopic(w, t)
	}
	delete(b.instances[t.instance].topics, t.name)
	delete(b.topicsByID, t.id)
	t.signal() // long polls on it end
}

// Topic describes one topic.
func (b *Broker) Topic(instanceID, name string) (TopicInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, err := b.topicLocked(instanceID, name)
	if err != nil {
		return TopicInfo{}, err
	}
	return t.info(), nil
}

// Topics lists the instance's topics, sorted by name.
func (b *Broker) Topics(instanceID string) ([]TopicInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return nil, err
	}
	out := make([]TopicInfo, 0, len(inst.topics))
	for _, t := range inst.topics {
		out = append(out, t.info())
	}
	slices.SortFunc(out, func(a, b TopicInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// topicLocked resolves a topic by instance and name. b.mu should be held.
func (b *Broker) topicLocked(instanceID, name string) (*topic, error) {
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return nil, err
	}
	t, ok := inst.topics[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrTopicNotFound, name)
	}
	return t, nil
}

// info describes t. b.mu should be held.
func (t *topic) info() TopicInfo {
	var n, size int64
	var published, publishedBytes uint64
	for _, q := range t.queues {
		n += q.messages()
		total := q.durableBytes.Load()
		size += int64(total - q.reclaimed.Load())
		published += q.durable.Load()
		publishedBytes += total
	}
	return TopicInfo{Name: t.name, Type: t.typ, Queues: len(t.queues), Retention: t.retention, Owner: t.owner,
		System: t.system, Messages: n, Bytes: size, Published: published, PublishedBytes: publishedBytes,
		PublishedBy: t.published.read(), PendingTimers: t.timers.Load()}
}

// signal wakes everything waiting for messages on t.
func (t *topic) signal() {
	t.notifyMu.Lock()
	close(t.notify)
	t.notify = make(chan struct{})
	t.notifyMu.Unlock()
}

// waitCh returns a channel closed at the next signal.
func (t *topic) waitCh() <-chan struct{} {
	t.notifyMu.Lock()
	defer t.notifyMu.Unlock()
	return t.notify
}

func topicIDString(id uint32) string { return string(binary.BigEndian.AppendUint32(nil, id)) }

// recoverTopic rebuilds a topic and its queues' offsets from the store.
func (b *Broker) recoverTopic(id string, raw []byte) error {
	var m topicMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if len(id) != 4 {
		return fmt.Errorf("bad topic id")
	}
	inst, ok := b.instances[m.Instance]
	if !ok {
		return nil // its instance was deleted; the topic goes with it
	}
	t := &topic{id: binary.BigEndian.Uint32([]byte(id)), instance: m.Instance, name: m.Name, typ: m.Type,
		retention: m.Retention, owner: m.Owner, system: m.System, notify: make(chan struct{}), stats: inst.stats}
	for i := range m.Queues {
		q := &queue{topic: t, id: i}
		if last, err := b.store.lastKey(queueKey(t.id, i, 0), queueKey(t.id, i+1, 0)); err != nil {
			return err
		} else if last != nil {
			q.next = queueKeyOffset(last) + 1
		}
		// What retention and re-drives removed; it matters most when they removed
		// the newest entries, whose offsets must not be handed out again.
		if raw, err := b.store.get(queueMinKey(t.id, i)); err == nil {
			tr, ok := decodeQueueTrim(raw)
			if !ok {
				return fmt.Errorf("corrupt trim state of queue %d of topic %q", i, m.Name)
			}
			q.min.Store(tr.min)
			q.reclaimed.Store(tr.reclaimed)
			q.holes.Store(tr.holes)
		} else if err != errNotFound {
			return err
		}
		if raw, err := b.store.get(queueBytesKey(t.id, i)); err == nil && len(raw) >= 8 {
			q.bytes = binary.BigEndian.Uint64(raw)
			if len(raw) == 16 {
				q.next = max64(q.next, binary.BigEndian.Uint64(raw[8:]))
			}
		} else if err != nil && err != errNotFound {
			return err
		}
		q.next = max64(q.next, q.min.Load())
		q.durable.Store(q.next)
		q.durableBytes.Store(q.bytes)
		t.queues = append(t.queues, q)
	}
	inst.topics[t.name] = t
	b.topicsByID[t.id] = t
	return nil
}

// wireNameLength is the length of a topic's name as remoting clients of the
// instance see it: "instance%name", or "%RETRY%instance%group" for system topics.
func wireNameLength(instanceID, name string) int {
	return len(instanceID) + 1 + len(name)
}
