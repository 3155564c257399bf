package remoting

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// groupKey names a consumer or producer group of an instance (broker-side id).
type groupKey struct{ instance, group string }

// member is one client of a consumer group, as its heartbeats describe it.
type member struct {
	clientID string
	conn     *conn
	names    namer
	// subs are the group's subscriptions by broker topic name; the broker filters
	// pulls with them, since pulls carry none (3.6.3).
	subs     map[string]subscription
	lastSeen time.Time
}

type subscription struct {
	expr   string
	filter broker.Filter
}

// registry tracks live clients: consumer group members, for rebalancing and pull
// filters, and the connections of producer groups, for transaction check-backs.
type registry struct {
	s         *Server
	mu        sync.Mutex
	consumers map[groupKey]map[string]*member // by client id
	producers map[groupKey]*producerGroup
	// producerGroups counts the producer groups of each instance.
	producerGroups map[string]int
	// pending are groups with a rebalance request scheduled.
	pending map[groupKey]bool
}

// producerGroup is a producer group's connections and when its check-backs are
// next looked for.
type producerGroup struct {
	conns map[*conn]producerConn
	// nextCheck is when the housekeeping next asks the broker for the group's due
	// check-backs; idle is the wait after a look that found none, doubled each
	// time up to maxIdleCheck, so that groups without half messages (most) cost the
	// broker's walk over the half messages rarely.
	nextCheck time.Time
	idle      time.Duration
}

// maxIdleCheck bounds the wait between looks at a group without due check-backs.
// A half message sent here makes its group looked at in the next round; one left
// from before a restart is checked back at most this much late (RocketMQ's broker
// looks once a minute).
const maxIdleCheck = 10 * time.Second

type producerConn struct {
	names    namer
	lastSeen time.Time
}

func newRegistry(s *Server) *registry {
	return &registry{s: s, consumers: map[groupKey]map[string]*member{}, producers: map[groupKey]*producerGroup{},
		producerGroups: map[string]int{}, pending: map[groupKey]bool{}}
}

// addClientID records that c's heartbeats speak for a consumer client id, within
// maxClientIDsPerConn.
func (r *registry) addClientID(c *conn, clientID string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.clientIDs[clientID] {
		return nil
	}
	if len(c.clientIDs) >= maxClientIDsPerConn {
		return fmt.Errorf("client %q not registered: one connection registers at most %d consumer client ids", clientID, maxClientIDsPerConn)
	}
	if c.clientIDs == nil {
		c.clientIDs = map[string]bool{}
	}
	c.clientIDs[clientID] = true
	return nil
}

// joinConsumer records a heartbeat of clientID in group. It reports whether the
// group's membership or subscriptions changed, in which case every member is told
// to rebalance.
func (r *registry) joinConsumer(key groupKey, m *member) {
	r.mu.Lock()
	members := r.consumers[key]
	if members == nil {
		members = map[string]*member{}
		r.consumers[key] = members
	}
	old := members[m.clientID]
	changed := old == nil || old.conn != m.conn || !sameSubs(old.subs, m.subs)
	members[m.clientID] = m
	r.mu.Unlock()
	if changed {
		r.notify(key)
	}
}

func sameSubs(a, b map[string]subscription) bool {
	return maps.EqualFunc(a, b, func(x, y subscription) bool { return x.expr == y.expr })
}

// leaveOtherGroups drops clientID from the instance's groups its heartbeat no
// longer lists: a consumer shut down while its client lives on for others (3.5).
func (r *registry) leaveOtherGroups(instance, clientID string, listed map[string]bool) {
	var left []groupKey
	r.mu.Lock()
	for key, members := range r.consumers {
		if key.instance != instance || listed[key.group] {
			continue
		}
		if _, ok := members[clientID]; ok {
			delete(members, clientID)
			left = append(left, key)
		}
	}
	r.mu.Unlock()
	for _, key := range left {
		r.s.Broker.ReleaseClient(key.instance, clientID)
		r.notify(key)
	}
}

// joinProducer records a connection of a producer group, within the bounds on
// producer groups per connection and per instance. half says that the connection
// just sent a half message of the group, whose check-backs are then looked for in
// the next round.
func (r *registry) joinProducer(key groupKey, c *conn, names namer, half bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.producers[key]
	if !c.producerGroups[key] && len(c.producerGroups) >= maxProducerGroupsPerConn {
		return fmt.Errorf("producer group %q not registered: one connection registers at most %d producer groups", key.group, maxProducerGroupsPerConn)
	}
	if g == nil {
		if r.producerGroups[key.instance] >= maxProducerGroupsPerInstance {
			return fmt.Errorf("producer group %q not registered: instance %q has %d producer groups connected, the most it may", key.group, key.instance, maxProducerGroupsPerInstance)
		}
		g = &producerGroup{conns: map[*conn]producerConn{}}
		r.producers[key] = g
		r.producerGroups[key.instance]++
	}
	if c.producerGroups == nil {
		c.producerGroups = map[groupKey]bool{}
	}
	c.producerGroups[key] = true
	now := r.s.Clock.Now()
	g.conns[c] = producerConn{names: names, lastSeen: now}
	if half {
		g.nextCheck, g.idle = time.Time{}, 0
	}
	return nil
}

// members returns the client ids of a group, sorted.
func (r *registry) members(key groupKey) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := slices.Collect(maps.Keys(r.consumers[key]))
	slices.Sort(ids)
	return ids
}

// subscription returns the group's filter for a topic, preferring what the member
// on this connection declared.
func (r *registry) subscription(key groupKey, c *conn, topic string) (broker.Filter, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var found *subscription
	for _, m := range r.consumers[key] {
		if sub, ok := m.subs[topic]; ok {
			if m.conn == c {
				return sub.filter, true
			}
			found = &sub
		}
	}
	if found == nil {
		return broker.Filter{}, false
	}
	return found.filter, true
}

// dueProducers returns the live connections of the producer groups whose
// check-backs are to be looked for now, by group.
func (r *registry) dueProducers(now time.Time) map[groupKey][]*conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[groupKey][]*conn{}
	for key, g := range r.producers {
		if g.nextCheck.After(now) {
			continue
		}
		for c := range g.conns {
			out[key] = append(out[key], c)
		}
	}
	return out
}

// checked records a look at a group's check-backs: one that found some looks
// again next round; one that found none waits longer each time.
func (r *registry) checked(key groupKey, found bool, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.producers[key]
	if g == nil {
		return
	}
	if found {
		g.nextCheck, g.idle = now, 0
		return
	}
	g.idle = min(max(2*g.idle, r.s.CheckEvery), maxIdleCheck)
	g.nextCheck = now.Add(g.idle)
}

func (r *registry) producerNames(key groupKey, c *conn) namer {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.producers[key]; g != nil {
		return g.conns[c].names
	}
	return namer{}
}

// unregister drops a client from every group of the instance.
func (r *registry) unregister(instance, clientID string) {
	r.leaveOtherGroups(instance, clientID, nil)
}

// dropConn forgets everything a closed connection carried, releases its clients'
// queue locks at once (rather than after the lease, 3.9) and tells the groups.
func (r *registry) dropConn(c *conn) {
	r.drop(func(m *member) bool { return m.conn == c }, func(pc *conn, _ producerConn) bool { return pc == c })
}

// expire drops clients whose last heartbeat is older than before.
func (r *registry) expire(before time.Time) {
	r.drop(func(m *member) bool { return m.lastSeen.Before(before) },
		func(_ *conn, p producerConn) bool { return p.lastSeen.Before(before) })
}

func (r *registry) drop(consumer func(*member) bool, producer func(*conn, producerConn) bool) {
	type gone struct {
		key      groupKey
		clientID string
	}
	var left []gone
	r.mu.Lock()
	for key, members := range r.consumers {
		for id, m := range members {
			if consumer(m) {
				delete(members, id)
				left = append(left, gone{key, id})
			}
		}
		if len(members) == 0 {
			delete(r.consumers, key)
		}
	}
	for key, g := range r.producers {
		for c, p := range g.conns {
			if producer(c, p) {
				delete(g.conns, c)
				delete(c.producerGroups, key)
			}
		}
		if len(g.conns) == 0 {
			delete(r.producers, key)
			if r.producerGroups[key.instance]--; r.producerGroups[key.instance] <= 0 {
				delete(r.producerGroups, key.instance)
			}
		}
	}
	r.mu.Unlock()
	notified := map[groupKey]bool{}
	for _, g := range left {
		r.s.Broker.ReleaseClient(g.key.instance, g.clientID)
		if !notified[g.key] {
			notified[g.key] = true
			r.notify(g.key)
		}
	}
}

// notifyAfter asks the group to rebalance after d, once however often it is asked.
func (r *registry) notifyAfter(key groupKey, d time.Duration) {
	r.mu.Lock()
	if r.pending[key] {
		r.mu.Unlock()
		return
	}
	r.pending[key] = true
	r.mu.Unlock()
	t := r.s.Clock.NewTimer(d)
	go func() {
		<-t.C()
		r.mu.Lock()
		delete(r.pending, key)
		r.mu.Unlock()
		r.notify(key)
	}()
}

// notify tells every member of a group to rebalance now (3.12).
func (r *registry) notify(key groupKey) {
	r.mu.Lock()
	var targets []*member
	for _, m := range r.consumers[key] {
		targets = append(targets, m)
	}
	r.mu.Unlock()
	for _, m := range targets {
		_ = m.conn.request(reqNotifyConsumerIDs, map[string]string{"consumerGroup": m.names.group(key.group)}, nil)
	}
}
