package remoting

import (
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
	filter broker.TagFilter
}

// registry tracks live clients: consumer group members, for rebalancing and pull
// filters, and the connections of producer groups, for transaction check-backs.
type registry struct {
	s         *Server
	mu        sync.Mutex
	consumers map[groupKey]map[string]*member // by client id
	producers map[groupKey]map[*conn]producerConn
	// pending are groups with a rebalance request scheduled.
	pending map[groupKey]bool
}

type producerConn struct {
	names    namer
	lastSeen time.Time
}

func newRegistry(s *Server) *registry {
	return &registry{s: s, consumers: map[groupKey]map[string]*member{}, producers: map[groupKey]map[*conn]producerConn{},
		pending: map[groupKey]bool{}}
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

// joinProducer records a connection of a producer group.
func (r *registry) joinProducer(key groupKey, c *conn, names namer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	conns := r.producers[key]
	if conns == nil {
		conns = map[*conn]producerConn{}
		r.producers[key] = conns
	}
	conns[c] = producerConn{names: names, lastSeen: r.s.Clock.Now()}
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
func (r *registry) subscription(key groupKey, c *conn, topic string) (broker.TagFilter, bool) {
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
		return broker.TagFilter{}, false
	}
	return found.filter, true
}

// producerConns returns the live connections of the producer groups, by group.
func (r *registry) producerConns() map[groupKey][]*conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[groupKey][]*conn{}
	for key, conns := range r.producers {
		for c := range conns {
			out[key] = append(out[key], c)
		}
	}
	return out
}

func (r *registry) producerNames(key groupKey, c *conn) namer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.producers[key][c].names
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
	for key, conns := range r.producers {
		for c, p := range conns {
			if producer(c, p) {
				delete(conns, c)
			}
		}
		if len(conns) == 0 {
			delete(r.producers, key)
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
