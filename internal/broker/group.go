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

// Protocol is how a consumer group consumes; a group is used through one only.
type Protocol string

const (
	// HTTP groups consume pop style: the broker tracks what each message's consumer
	// acknowledged, and unacknowledged messages come back after their invisibility.
	HTTP Protocol = "HTTP"
	// TCP groups consume pull style: consumers pull from offsets and commit progress.
	TCP Protocol = "TCP"
)

// DefaultMaxRedeliveries is RocketMQ's default retry limit before a message goes to
// the group's dead letters.
const DefaultMaxRedeliveries = 16

var groupIDPattern = regexp.MustCompile(`^[%|a-zA-Z0-9_-]{1,127}$`)

// GroupConfig is the declared state of a consumer group.
type GroupConfig struct {
	ID       string
	Protocol Protocol
	// MaxRedeliveries is how many times a message is delivered again before it goes
	// to the dead letters; zero means DefaultMaxRedeliveries.
	MaxRedeliveries int
	Owner           string
}

// GroupInfo describes a group.
type GroupInfo struct {
	ID              string
	Protocol        Protocol
	MaxRedeliveries int
	Owner           string
}

// group is one consumer group. Its configuration is guarded by Broker.mu; its
// consume state by its own mutex.
type group struct {
	id              uint32
	instance        string
	name            string
	protocol        Protocol
	maxRedeliveries int
	owner           string

	// lastConsume is when the group last consumed (ms): popped, acknowledged,
	// committed an offset or locked a queue.
	lastConsume atomic.Int64
	// counts are what the group consumed since the broker opened, per topic
	// name (*groupCounts), for metrics: see countsOn.
	counts sync.Map
	// workers are the latest progress reports of the group's named workers.
	workers workerBook

	mu sync.Mutex
	// pop holds the pop-style consume state of each queue the group has consumed,
	// created on first use.
	pop map[*queue]*popQueue
	// resets are the offsets a TCP group was reset to (ResetOffsets) on queues no
	// consumer has pulled from since; resetsPending counts them, so that pulls
	// and commits look under mu only while there are some.
	resets        map[*queue]uint64
	resetsPending atomic.Int32
}

type groupMeta struct {
	Instance        string   `json:"instance"`
	Name            string   `json:"name"`
	Protocol        Protocol `json:"protocol"`
	MaxRedeliveries int      `json:"maxRedeliveries"`
	Owner           string   `json:"owner"`
}

// EnsureGroup creates the group or brings it to cfg. It is idempotent. The protocol
// cannot change (ErrImmutable); a group declared by another owner is refused with a
// *ConflictError.
func (b *Broker) EnsureGroup(instanceID string, cfg GroupConfig) (GroupInfo, error) {
	if !groupIDPattern.MatchString(cfg.ID) {
		return GroupInfo{}, fmt.Errorf("%w: group id %q must be 1 to 127 characters of [%%|a-zA-Z0-9_-]", ErrInvalidArgument, cfg.ID)
	}
	switch cfg.Protocol {
	case HTTP, TCP:
	default:
		return GroupInfo{}, fmt.Errorf("%w: protocol %q is not HTTP or TCP", ErrInvalidArgument, cfg.Protocol)
	}
	if n := wireNameLength(instanceID, RetryTopic(cfg.ID)); n > MaxWireNameLength {
		return GroupInfo{}, fmt.Errorf("%w: group %q makes a retry topic of %d bytes with the instance prefix %q%%; RocketMQ clients take at most %d",
			ErrInvalidArgument, cfg.ID, n, instanceID, MaxWireNameLength)
	}
	if cfg.MaxRedeliveries == 0 {
		cfg.MaxRedeliveries = DefaultMaxRedeliveries
	}
	if cfg.MaxRedeliveries < 1 || cfg.MaxRedeliveries > 1000 {
		return GroupInfo{}, fmt.Errorf("%w: max redeliveries %d is outside 1..1000", ErrInvalidArgument, cfg.MaxRedeliveries)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return GroupInfo{}, err
	}
	g, exists := inst.groups[cfg.ID]
	if limit := inst.quota.get().Groups; !exists && len(inst.groups) >= limit {
		return GroupInfo{}, fmt.Errorf("%w: instance %q holds its limit of %d consumer groups", ErrQuotaExceeded, instanceID, limit)
	}
	if exists {
		if g.owner != cfg.Owner && g.owner != AutoCreatedOwner {
			return GroupInfo{}, &ConflictError{Kind: "consumer group", Name: cfg.ID, Owner: g.owner}
		}
		if g.protocol != cfg.Protocol {
			return GroupInfo{}, fmt.Errorf("%w: group %q uses %s and cannot switch to %s", ErrImmutable, cfg.ID, g.protocol, cfg.Protocol)
		}
		if g.maxRedeliveries == cfg.MaxRedeliveries && g.owner == cfg.Owner {
			return g.info(), nil
		}
	} else {
		g = &group{id: b.counters.NextGroupID, instance: instanceID, name: cfg.ID, protocol: cfg.Protocol,
			owner: cfg.Owner, pop: map[*queue]*popQueue{}}
	}
	if !exists {
		// The retry and dead-letter topics first: if storing the group fails they
		// are harmless, and a retried declaration finds them.
		if err := b.ensureSystemTopicsLocked(inst, &group{name: cfg.ID}); err != nil {
			return GroupInfo{}, err
		}
	}
	w := b.store.newBatch()
	c := b.counters
	if !exists {
		c.NextGroupID++
		if err := b.setMeta(w, metaCounter, "", c); err != nil {
			return GroupInfo{}, err
		}
	}
	meta := groupMeta{Instance: instanceID, Name: cfg.ID, Protocol: cfg.Protocol, MaxRedeliveries: cfg.MaxRedeliveries, Owner: cfg.Owner}
	if err := b.setMeta(w, metaGroup, topicIDString(g.id), meta); err != nil {
		return GroupInfo{}, err
	}
	if err := b.store.commit(w); err != nil {
		return GroupInfo{}, fmt.Errorf("failed to store group %q: %w", cfg.ID, err)
	}
	b.counters = c
	g.maxRedeliveries = cfg.MaxRedeliveries
	g.owner = cfg.Owner // a declarer adopts an auto-created group
	if !exists {
		inst.groups[cfg.ID] = g
		b.groupsByID[g.id] = g
	}
	return g.info(), nil
}

// DeleteGroup removes the group and its progress, if owner declared it. Deleting a
// group that does not exist, or that another owner declared, succeeds without effect.
func (b *Broker) DeleteGroup(instanceID, id, owner string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		if b.closed {
			return err
		}
		return nil
	}
	g, ok := inst.groups[id]
	if !ok || g.owner != owner {
		return nil
	}
	w := b.store.newBatch()
	b.dropGroupLocked(w, g)
	if err := b.store.commit(w); err != nil {
		return fmt.Errorf("failed to delete group %q: %w", id, err)
	}
	b.kickReaper() // its retry and dead-letter topics
	b.locks.releaseGroup(instanceID, id)
	return nil
}

// dropGroupLocked removes g from the registries and adds the deletion of its
// progress and metadata to w. b.mu should be held.
func (b *Broker) dropGroupLocked(w writeBatch, g *group) {
	prefix := offsetPrefix(g.id)
	w.deleteRange(prefix, prefixEnd(prefix))
	w.delete(metaKey(metaGroup, topicIDString(g.id)))
	b.dropSystemTopicsLocked(w, b.instances[g.instance], g)
	delete(b.instances[g.instance].groups, g.name)
	delete(b.groupsByID, g.id)
}

// forgetTopic drops g's progress on t, which is being deleted, adding the deletion
// of its stored offsets to w.
func (g *group) forgetTopic(w writeBatch, t *topic) {
	prefix := offsetTopicPrefix(g.id, t.id)
	w.deleteRange(prefix, prefixEnd(prefix))
	g.mu.Lock()
	defer g.mu.Unlock()
	for q := range g.pop {
		if q.topic == t {
			delete(g.pop, q)
		}
	}
}

// Group describes one group.
func (b *Broker) Group(instanceID, id string) (GroupInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	g, err := b.groupLocked(instanceID, id)
	if err != nil {
		return GroupInfo{}, err
	}
	return g.info(), nil
}

// Groups lists the instance's groups, sorted by id.
func (b *Broker) Groups(instanceID string) ([]GroupInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return nil, err
	}
	out := make([]GroupInfo, 0, len(inst.groups))
	for _, g := range inst.groups {
		out = append(out, g.info())
	}
	slices.SortFunc(out, func(a, b GroupInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// groupLocked resolves a group. b.mu should be held.
func (b *Broker) groupLocked(instanceID, id string) (*group, error) {
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return nil, err
	}
	g, ok := inst.groups[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrGroupNotFound, id)
	}
	return g, nil
}

func (g *group) info() GroupInfo {
	return GroupInfo{ID: g.name, Protocol: g.protocol, MaxRedeliveries: g.maxRedeliveries, Owner: g.owner}
}

func (b *Broker) recoverGroup(id string, raw []byte) error {
	var m groupMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if len(id) != 4 {
		return fmt.Errorf("bad group id")
	}
	inst, ok := b.instances[m.Instance]
	if !ok {
		return nil
	}
	g := &group{id: binary.BigEndian.Uint32([]byte(id)), instance: m.Instance, name: m.Name, protocol: m.Protocol,
		maxRedeliveries: m.MaxRedeliveries, owner: m.Owner, pop: map[*queue]*popQueue{}}
	inst.groups[g.name] = g
	b.groupsByID[g.id] = g
	return nil
}

// touchGroup records that g consumed just now.
func (b *Broker) touchGroup(g *group) { g.lastConsume.Store(b.now().UnixMilli()) }

// firstStoreTime is when the first message of q in [from, to) became
// deliverable (its index entry's store time), zero if there is none: offsets
// removed from the middle (re-driven dead letters) are skipped.
func (b *Broker) firstStoreTime(q *queue, from, to uint64) (time.Time, error) {
	it, err := b.store.iter(queueKey(q.topic.id, q.id, from), queueKey(q.topic.id, q.id, to))
	if err != nil {
		return time.Time{}, err
	}
	defer it.close()
	if !it.first() {
		return time.Time{}, nil
	}
	e, ok := decodeIndexEntry(it.value())
	if !ok {
		return time.Time{}, fmt.Errorf("corrupt index entry %x", it.key())
	}
	return fromMillis(e.storeTime), nil
}

// GroupTopicStats is a group's progress on one topic.
type GroupTopicStats struct {
	Topic string
	// Backlog is how many messages the group has not consumed yet, in flight ones
	// included.
	Backlog int64
	// InFlight is how many are handed out and not yet acknowledged (HTTP groups).
	InFlight int64
	// OldestAge is how long the oldest message of the backlog has been
	// deliverable, by the broker's clock (zero with no backlog).
	OldestAge time.Duration
	// GroupCounts are the group's consumption of the topic since the broker
	// opened.
	GroupCounts
}

// groupCounts count a group's consumption since the broker opened.
type groupCounts struct {
	delivered, redelivered, acked, deadLettered atomic.Uint64
}

// GroupCounts are what a group consumed since the broker opened: messages handed
// to it for the first time (a pop's first delivery, or pulled), handed to it again
// (a pop's redelivery, or sent back by a TCP consumer to come back later),
// acknowledged (HTTP), and moved to its dead letters.
type GroupCounts struct {
	Delivered, Redelivered, Acked, DeadLettered uint64
}

func (c *groupCounts) read() GroupCounts {
	return GroupCounts{Delivered: c.delivered.Load(), Redelivered: c.redelivered.Load(), Acked: c.acked.Load(), DeadLettered: c.deadLettered.Load()}
}

func (c *GroupCounts) add(o GroupCounts) {
	c.Delivered += o.Delivered
	c.Redelivered += o.Redelivered
	c.Acked += o.Acked
	c.DeadLettered += o.DeadLettered
}

// countsOn returns the group's counters of one topic, by name: a TCP group's
// retry topic counts apart from the topic its messages came from, as RocketMQ
// shows it. A topic deleted and declared again keeps counting where it was.
func (g *group) countsOn(topic string) *groupCounts {
	if c, ok := g.counts.Load(topic); ok {
		return c.(*groupCounts)
	}
	c, _ := g.counts.LoadOrStore(topic, &groupCounts{})
	return c.(*groupCounts)
}

// GroupStats describes a group's consumption.
type GroupStats struct {
	GroupInfo
	// GroupCounts are the sums over Topics, deleted topics included.
	GroupCounts
	// Topics are the topics the group has consumed, sorted by name: those it
	// has a backlog on, and the system topics it consumed (a TCP group's retry
	// topic), which have counts only.
	Topics      []GroupTopicStats
	DeadLetters int64
	// LastConsumeTime is zero if the group never consumed since the broker started.
	LastConsumeTime time.Time
}

// GroupStats reports a group's backlog per topic, in-flight and dead-letter counts.
func (b *Broker) GroupStats(instanceID, groupID string) (GroupStats, error) {
	if err := b.enter(); err != nil {
		return GroupStats{}, err
	}
	defer b.leave()
	b.mu.RLock()
	g, err := b.groupLocked(instanceID, groupID)
	if err != nil {
		b.mu.RUnlock()
		return GroupStats{}, err
	}
	out := GroupStats{GroupInfo: g.info(), LastConsumeTime: fromMillis(g.lastConsume.Load())}
	if dlq, ok := b.instances[instanceID].topics[DLQTopic(groupID)]; ok {
		out.DeadLetters = dlq.queues[0].messages()
	}
	b.mu.RUnlock()

	// Committed offsets as stored, then the pop state in memory, which is newer.
	committed := map[*queue]uint64{}
	inflight := map[*queue]int64{}
	prefix := offsetPrefix(g.id)
	it, err := b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		return GroupStats{}, err
	}
	for ok := it.first(); ok; ok = it.next() {
		topic, queue, kok := offsetKeyQueue(it.key())
		off, vok := decodeOffset(it.value())
		if q := b.queueByID(topic, queue); q != nil && kok && vok {
			committed[q] = off
		}
	}
	if err := it.close(); err != nil {
		return GroupStats{}, err
	}
	g.mu.Lock()
	for q, pq := range g.pop {
		c, n := pq.progress()
		committed[q], inflight[q] = c, int64(n)
	}
	g.mu.Unlock()

	// A queue of a consumed topic that the group never touched starts at its oldest
	// message, as a new group does.
	for q := range committed {
		b.mu.RLock()
		queues := q.topic.queues
		b.mu.RUnlock()
		for _, other := range queues {
			if _, ok := committed[other]; !ok {
				committed[other] = other.min.Load()
			}
		}
	}
	byTopic := map[string]*GroupTopicStats{}
	for q, c := range committed {
		if q.topic.deleted.Load() || q.topic.system {
			continue
		}
		s := byTopic[q.topic.name]
		if s == nil {
			s = &GroupTopicStats{Topic: q.topic.name}
			byTopic[q.topic.name] = s
		}
		if d := q.durable.Load(); d > c {
			from := max64(c, q.min.Load())
			s.Backlog += int64(d - from)
			oldest, err := b.firstStoreTime(q, from, d)
			if err != nil {
				return GroupStats{}, err
			}
			if age := b.now().Sub(oldest); !oldest.IsZero() && age > s.OldestAge {
				s.OldestAge = age
			}
		}
		s.InFlight += inflight[q]
	}
	g.counts.Range(func(k, v any) bool {
		name, c := k.(string), v.(*groupCounts).read()
		out.GroupCounts.add(c)
		b.mu.RLock()
		t, ok := b.instances[instanceID].topics[name]
		b.mu.RUnlock()
		if !ok || t.deleted.Load() {
			return true
		}
		s := byTopic[name]
		if s == nil {
			s = &GroupTopicStats{Topic: name}
			byTopic[name] = s
		}
		s.GroupCounts = c
		return true
	})
	for _, s := range byTopic {
		out.Topics = append(out.Topics, *s)
	}
	slices.SortFunc(out.Topics, func(a, b GroupTopicStats) int { return strings.Compare(a.Topic, b.Topic) })
	return out, nil
}
