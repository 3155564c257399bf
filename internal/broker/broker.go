package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/orderly-dev/orderly/internal/clock"
)

// Sentinel errors. Callers branch on them with errors.Is; protocol servers map them
// to their own error codes.
var (
	// ErrInstanceNotFound means no instance has the given id.
	ErrInstanceNotFound = errors.New("instance not found")
	// ErrTopicNotFound means the instance has no topic of that name.
	ErrTopicNotFound = errors.New("topic not found")
	// ErrMessageNotFound means no message has the given id (or it is past retention).
	ErrMessageNotFound = errors.New("message not found")
	// ErrGroupNotFound means the instance has no consumer group of that id.
	ErrGroupNotFound = errors.New("consumer group not found")
	// ErrInvalidArgument means a request carried a value the broker does not accept;
	// the wrapping error says which.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrMessageType means a message does not fit its topic's type (a transactional
	// message to a normal topic, say).
	ErrMessageType = errors.New("message does not fit the topic's type")
	// ErrWrongProtocol means a group was used through the other protocol.
	ErrWrongProtocol = errors.New("consumer group belongs to another protocol")
	// ErrImmutable means an update tried to change what cannot change (a topic's type,
	// a group's protocol, a shrinking queue count).
	ErrImmutable = errors.New("cannot change after creation")
	// ErrClosed means the broker has been closed.
	ErrClosed = errors.New("broker closed")
	// ErrConflict means another owner already declared the object; errors carrying it
	// are *ConflictError.
	ErrConflict = errors.New("owned by another declarer")
	// ErrThrottled means the broker will not take more of this now, to bound what
	// one client can make it hold: the caller should back off and retry. Protocol
	// servers answer with their flow-control code (remoting's SYSTEM_BUSY).
	ErrThrottled = errors.New("throttled")
	// ErrQuotaExceeded means a declaration would take an instance past one of its
	// Limits.
	ErrQuotaExceeded = errors.New("quota exceeded")
)

// ConflictError reports an object declared by another owner.
type ConflictError struct {
	// Kind and Name identify the object, Owner its current owner, and for an
	// instance Declarer who declared it (see InstanceConfig.Declarer).
	Kind, Name, Owner, Declarer string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q is owned by %s", e.Kind, e.Name, e.Owner)
}

// Is makes errors.Is(err, ErrConflict) true for a *ConflictError.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// instanceIDPattern is the shape of an instance id. The id becomes part of TCP topic
// names (instanceId%topic), so it is held to the topic-name character set, minus the
// separators.
var instanceIDPattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// Options configure a broker.
type Options struct {
	// Dir is where the broker keeps its data. Empty keeps everything in memory (tests).
	Dir string
	// RelaxedFlush acknowledges publishes before they reach the disk. A process crash
	// loses nothing (the operating system holds the writes); a machine crash can lose
	// the last acknowledged messages. Off by default.
	RelaxedFlush bool
	// Clock defaults to the wall clock.
	Clock clock.Clock
	Log   logr.Logger
	// StoreHost and StorePort are encoded in message ids; TCP clients read the
	// commit-log offset back out of them. Defaults: 127.0.0.1 and 9876.
	StoreHost [4]byte
	StorePort uint32
	// DelayLevels are the delays of RocketMQ's delay levels 1..n; tests shorten
	// them. Default: DefaultDelayLevels.
	DelayLevels []time.Duration
	// LockLease is how long an orderly consumer's queue lock lasts unless renewed.
	// Clients renew every 20 s, so it must be longer in production; tests shorten it
	// because a queue a client gave up in a rebalance stays locked until it lapses
	// (the Go client does not unlock it). Default: LockLease.
	LockLease time.Duration
}

// Credential is an AccessKey pair that authenticates requests for one instance.
type Credential struct {
	AccessKeyID     string
	AccessKeySecret string
}

// InstanceConfig is the declared state of an instance.
type InstanceConfig struct {
	// ID is the broker-side instance id.
	ID string
	// Owner identifies the declarer (the controllers pass the Instance's UID). The first
	// owner to declare an id keeps it until it deletes it, so two declarers of one id
	// never take turns overwriting each other.
	Owner string
	// PreviousOwner, when set, lets Owner take over an instance held by PreviousOwner
	// (a declarer that no longer exists). The swap happens only if PreviousOwner still
	// holds it, so a concurrent legitimate claim is never overridden, and only for the
	// same Declarer.
	PreviousOwner string
	// Declarer names who declares the instance across owners (the controllers pass
	// the Instance's namespace/name; a UID changes when an object is recreated).
	// The first declarer of an id keeps it: an orphaned instance is adopted only by
	// an owner with the same Declarer, never by another namespace's object.
	Declarer string
	// Credentials are the AccessKey pairs accepted for this instance. An AccessKey id
	// authenticates for one instance only, and belongs to the first instance that
	// declared it until that instance drops it: the binding of ids to instances is
	// stored, so a restart changes no key's owner. The secrets are held in memory
	// only: the declarer declares them again after a restart.
	Credentials []Credential
	// Limits are the instance's quotas; zero fields take the defaults. Held in
	// memory, like the credentials.
	Limits Limits
	// AutoCreate lets the TCP endpoint create the instance's topics and consumer
	// groups on first use, as RocketMQ brokers do with autoCreateTopicEnable and
	// autoCreateSubscriptionGroup. Off unless the declarer opts in: a typo in a
	// client's configuration should fail, not become a live topic. Held in memory,
	// like the credentials.
	AutoCreate AutoCreatePolicy
}

// InstanceInfo describes an instance as the broker holds it. It never carries secrets.
type InstanceInfo struct {
	ID           string
	Owner        string
	AccessKeyIDs []string
	Topics       int
	Groups       int
}

// instance is one tenant. Its fields are guarded by Broker.mu.
type instance struct {
	id          string
	owner       string
	declarer    string
	credentials map[string]string // AccessKey id -> secret
	autoCreate  AutoCreatePolicy
	quota       *quota
	stats       *instanceStats
	topics      map[string]*topic
	groups      map[string]*group
}

// Broker is the embedded broker. It is safe for concurrent use.
type Broker struct {
	opts  Options
	clock clock.Clock
	log   logr.Logger
	store *store
	// messages is the log layer over the store (log.go): records, queue views,
	// their removal.
	messages *messageLog

	// mu guards the registries below; it is never held across disk I/O except for
	// the small metadata commits of admin operations, which are rare.
	mu         sync.RWMutex
	closed     bool
	instances  map[string]*instance
	accessKeys map[string]string // AccessKey id -> instance id, stored under 'M' 'K' id
	topicsByID map[uint32]*topic
	groupsByID map[uint32]*group
	counters   counters

	// commits is the write path (groupcommit.go): publishers submit appendRequests,
	// applied in batches by applyBatch and made visible by madeDurable.
	commits    *groupCommit
	nextSeq    uint64         // next log sequence; the writer goroutine's after recovery
	publishers sync.WaitGroup // publishes between the closed check and their send
	// calls are the calls that use the store outside b.mu (consumption, lookups,
	// housekeeping); Close waits for them before it closes the store.
	calls sync.WaitGroup
	// background loops (timers) that feed the writer; stopped through quit before
	// the writer is.
	background sync.WaitGroup
	quit       chan struct{}
	// reapKick wakes the retention loop to reap a deleted topic; reapMu keeps one
	// reaper at a time.
	reapKick chan struct{}
	reapMu   sync.Mutex
	txns     txnRegistry
	timers   timers
	locks    locks
	// unknownKeyRefusals: observe.go.
	unknownKeyRefusals atomic.Uint64
	failed             failure
}

// counters are the id allocators, persisted with the metadata.
type counters struct {
	NextTopicID uint32 `json:"nextTopicId"`
	NextGroupID uint32 `json:"nextGroupId"`
}

// Open opens the broker stored in opts.Dir, recovering its state, and starts it.
func Open(opts Options) (*Broker, error) {
	if opts.Clock == nil {
		opts.Clock = clock.Real{}
	}
	if opts.StoreHost == [4]byte{} {
		opts.StoreHost = [4]byte{127, 0, 0, 1}
	}
	if opts.StorePort == 0 {
		opts.StorePort = 9876
	}
	if opts.LockLease <= 0 {
		opts.LockLease = LockLease
	}
	if len(opts.DelayLevels) == 0 {
		opts.DelayLevels = DefaultDelayLevels()
	}
	st, err := openStore(opts.Dir, !opts.RelaxedFlush)
	if err != nil {
		return nil, err
	}
	b := &Broker{
		opts:       opts,
		clock:      opts.Clock,
		log:        opts.Log,
		store:      st,
		messages:   &messageLog{store: st, host: opts.StoreHost, port: opts.StorePort},
		instances:  make(map[string]*instance),
		accessKeys: make(map[string]string),
		topicsByID: make(map[uint32]*topic),
		groupsByID: make(map[uint32]*group),
		counters:   counters{NextTopicID: 1, NextGroupID: 1},
		quit:       make(chan struct{}),
		reapKick:   make(chan struct{}, 1),
		txns:       newTxnRegistry(),
		timers:     timers{kick: make(chan struct{}, 1)},
		locks:      locks{owner: map[lockKey]lease{}},
	}
	b.commits = newGroupCommit(b.applyBatch, b.madeDurable, &b.failed, b.log)
	if err := b.recover(); err != nil {
		_ = st.close()
		return nil, err
	}
	b.commits.start()
	for _, loop := range []func(){b.timerLoop, b.retentionLoop} {
		b.background.Add(1)
		go func() {
			defer b.background.Done()
			loop()
		}()
	}
	return b, nil
}

// Close stops accepting work, waits for acknowledged work to reach the disk, and
// releases everything. Later calls fail with ErrClosed.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	topics := make([]*topic, 0, len(b.topicsByID))
	for _, t := range b.topicsByID {
		topics = append(topics, t)
	}
	b.mu.Unlock()
	for _, t := range topics {
		t.signal() // long polls see the broker closed
	}
	close(b.quit)
	b.background.Wait()
	// Long polls were woken above and end with ErrClosed; the rest finish what
	// they do, publishing through the writer, which still runs.
	b.calls.Wait()
	b.publishers.Wait()
	b.commits.stop()
	return b.store.close()
}

// enter admits a call that uses the store outside b.mu, or refuses it once the
// broker is closing; the call must leave when done.
func (b *Broker) enter() error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	b.calls.Add(1)
	return nil
}

func (b *Broker) leave() { b.calls.Done() }

// EnsureInstance creates the instance or brings an existing one to cfg. It is
// idempotent. An instance held by another owner is refused with a *ConflictError, and
// an AccessKey id already bound to another instance with ErrInvalidArgument, because a
// key authenticates for its own instance only.
func (b *Broker) EnsureInstance(cfg InstanceConfig) error {
	if !instanceIDPattern.MatchString(cfg.ID) {
		return fmt.Errorf("%w: instance id %q must be 1 to 64 characters of [a-zA-Z0-9_-]", ErrInvalidArgument, cfg.ID)
	}
	limits, err := cfg.Limits.withDefaults()
	if err != nil {
		return err
	}
	creds := make(map[string]string, len(cfg.Credentials))
	for _, c := range cfg.Credentials {
		if c.AccessKeyID == "" || c.AccessKeySecret == "" {
			return fmt.Errorf("%w: an AccessKey pair needs both an id and a secret", ErrInvalidArgument)
		}
		creds[c.AccessKeyID] = c.AccessKeySecret
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	inst, ok := b.instances[cfg.ID]
	if ok && inst.owner != cfg.Owner {
		adopt := cfg.PreviousOwner != "" && inst.owner == cfg.PreviousOwner && (inst.declarer == "" || inst.declarer == cfg.Declarer)
		if !adopt {
			return &ConflictError{Kind: "instance", Name: cfg.ID, Owner: inst.owner, Declarer: inst.declarer}
		}
	}
	for id := range creds {
		if owner, ok := b.accessKeys[id]; ok && owner != cfg.ID {
			return fmt.Errorf("%w: AccessKey id %q already authenticates for another instance", ErrInvalidArgument, id)
		}
	}
	declarer := cfg.Declarer
	if ok && inst.declarer != "" {
		declarer = inst.declarer // the first declarer's, for good
	}
	w := b.store.newBatch()
	if !ok || inst.owner != cfg.Owner || inst.declarer != declarer {
		if err := b.setMeta(w, metaInstance, cfg.ID, instanceMeta{Owner: cfg.Owner, Declarer: declarer}); err != nil {
			w.discard()
			return err
		}
	}
	// The binding of AccessKey ids to this instance, as it changes.
	for id, owner := range b.accessKeys {
		if _, keep := creds[id]; owner == cfg.ID && !keep {
			w.delete(metaKey(metaAccessKey, id))
		}
	}
	for id := range creds {
		if _, bound := b.accessKeys[id]; !bound {
			w.set(metaKey(metaAccessKey, id), []byte(cfg.ID))
		}
	}
	if w.empty() {
		w.discard()
	} else if err := b.store.commit(w); err != nil {
		return fmt.Errorf("failed to store instance %q: %w", cfg.ID, err)
	}
	if !ok {
		inst = newInstance(cfg.ID)
		b.instances[cfg.ID] = inst
	}
	inst.owner, inst.declarer = cfg.Owner, declarer
	for id, owner := range b.accessKeys {
		if _, keep := creds[id]; owner == cfg.ID && !keep {
			delete(b.accessKeys, id)
		}
	}
	for id := range creds {
		b.accessKeys[id] = cfg.ID
	}
	inst.credentials = creds
	inst.autoCreate = cfg.AutoCreate
	inst.quota.set(limits)
	return nil
}

func newInstance(id string) *instance {
	limits, _ := Limits{}.withDefaults()
	return &instance{id: id, topics: map[string]*topic{}, groups: map[string]*group{}, quota: newQuota(limits),
		stats: &instanceStats{}}
}

// DeleteInstance removes the instance and everything it holds, if owner owns it.
// Deleting an instance that does not exist, or that another owner holds, succeeds
// without effect: the caller's claim is gone either way, and retries are free.
func (b *Broker) DeleteInstance(id, owner string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	inst, ok := b.instances[id]
	if !ok || inst.owner != owner {
		return nil
	}
	w := b.store.newBatch()
	for _, t := range inst.topics {
		b.dropTopicLocked(w, t)
	}
	for _, g := range inst.groups {
		b.dropGroupLocked(w, g)
	}
	w.delete(metaKey(metaInstance, id))
	for key, owner := range b.accessKeys {
		if owner == id {
			w.delete(metaKey(metaAccessKey, key))
		}
	}
	if err := b.store.commit(w); err != nil {
		return fmt.Errorf("failed to delete instance %q: %w", id, err)
	}
	b.kickReaper()
	b.locks.releaseGroup(id, "")
	for key, owner := range b.accessKeys {
		if owner == id {
			delete(b.accessKeys, key)
		}
	}
	delete(b.instances, id)
	return nil
}

// Instance describes one instance.
func (b *Broker) Instance(id string) (InstanceInfo, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	inst, ok := b.instances[id]
	if !ok {
		return InstanceInfo{}, fmt.Errorf("%w: %q", ErrInstanceNotFound, id)
	}
	return inst.info(), nil
}

// Instances lists every instance, sorted by id.
func (b *Broker) Instances() []InstanceInfo {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]InstanceInfo, 0, len(b.instances))
	for _, inst := range b.instances {
		out = append(out, inst.info())
	}
	slices.SortFunc(out, func(a, b InstanceInfo) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// LookupAccessKey returns the instance an AccessKey id belongs to and its secret.
// The protocol servers verify request signatures with the secret; it must never be
// logged or sent.
func (b *Broker) LookupAccessKey(accessKeyID string) (instanceID, secret string, ok bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	instanceID, ok = b.accessKeys[accessKeyID]
	if !ok {
		return "", "", false
	}
	// After a restart a key is bound before its instance declares its secret
	// again: until then it authenticates nothing.
	secret, ok = b.instances[instanceID].credentials[accessKeyID]
	if !ok || secret == "" {
		return "", "", false
	}
	return instanceID, secret, true
}

// CheckNamespace checks the namespace a request names against the instance its
// AccessKey authenticates for. Clients name the instance as their namespace (the
// remoting clients' "ns%" prefix, gRPC's x-mq-namespace and resource_namespace);
// an empty one means the key's own. A key authenticates for its own instance
// only, so any other namespace is refused.
func CheckNamespace(namespace, instanceID string) error {
	if namespace != "" && namespace != instanceID {
		return fmt.Errorf("namespace %q is not the instance %q of the AccessKey", namespace, instanceID)
	}
	return nil
}

// info describes inst. b.mu should be held.
func (inst *instance) info() InstanceInfo {
	keys := make([]string, 0, len(inst.credentials))
	for k := range inst.credentials {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return InstanceInfo{ID: inst.id, Owner: inst.owner, AccessKeyIDs: keys, Topics: len(inst.topics), Groups: len(inst.groups)}
}

// instanceLocked returns the instance with id. b.mu should be held.
func (b *Broker) instanceLocked(id string) (*instance, error) {
	if b.closed {
		return nil, ErrClosed
	}
	inst, ok := b.instances[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrInstanceNotFound, id)
	}
	return inst, nil
}

// Metadata records, stored as JSON under 'M' keys: rare, small, and readable when
// someone has to look at a broker's data by hand.
type instanceMeta struct {
	Owner    string `json:"owner"`
	Declarer string `json:"declarer,omitempty"`
}

// putMeta writes one metadata record durably. b.mu should be held.
func (b *Broker) putMeta(kind byte, id string, v any) error {
	w := b.store.newBatch()
	if err := b.setMeta(w, kind, id, v); err != nil {
		return err
	}
	if err := b.store.commit(w); err != nil {
		return fmt.Errorf("failed to store metadata: %w", err)
	}
	return nil
}

func (b *Broker) setMeta(w writeBatch, kind byte, id string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.set(metaKey(kind, id), raw)
	return nil
}

// recover loads metadata and each queue's offsets from the store. It runs before
// the loops start, so it needs no locks.
func (b *Broker) recover() error {
	if raw, err := b.store.get(metaKey(metaCounter, "")); err == nil {
		if err := json.Unmarshal(raw, &b.counters); err != nil {
			return fmt.Errorf("corrupt id counters: %w", err)
		}
	} else if !errors.Is(err, errNotFound) {
		return err
	}
	if err := b.scanMeta(metaInstance, func(id string, raw []byte) error {
		var m instanceMeta
		if err := json.Unmarshal(raw, &m); err != nil {
			return err
		}
		inst := newInstance(id)
		inst.owner, inst.declarer = m.Owner, m.Declarer
		b.instances[id] = inst
		return nil
	}); err != nil {
		return err
	}
	if err := b.scanMeta(metaAccessKey, func(id string, raw []byte) error {
		if _, ok := b.instances[string(raw)]; ok {
			b.accessKeys[id] = string(raw)
		}
		return nil
	}); err != nil {
		return err
	}
	if err := b.scanMeta(metaTopic, b.recoverTopic); err != nil {
		return err
	}
	if err := b.scanMeta(metaGroup, b.recoverGroup); err != nil {
		return err
	}
	if err := b.recoverHalves(); err != nil {
		return err
	}
	if err := b.countTimers(); err != nil {
		return err
	}
	last, err := b.store.lastKey([]byte{kindLog}, []byte{kindLog + 1})
	if err != nil {
		return err
	}
	b.nextSeq = 1
	if last != nil {
		b.nextSeq = seqOfLogKey(last) + 1
	}
	if raw, err := b.store.get(metaKey(metaSeq, "")); err == nil && len(raw) == 8 {
		b.nextSeq = max64(b.nextSeq, binary.BigEndian.Uint64(raw))
	} else if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	// A topic deleted before the restart may not be fully reaped yet.
	b.reapKick <- struct{}{}
	return nil
}

func (b *Broker) scanMeta(kind byte, fn func(id string, raw []byte) error) error {
	prefix := []byte{kindMeta, kind}
	it, err := b.store.iter(prefix, prefixEnd(prefix))
	if err != nil {
		return err
	}
	defer it.close()
	for ok := it.first(); ok; ok = it.next() {
		id := string(it.key()[2:])
		v, err := it.valueErr()
		if err == nil {
			err = fn(id, v)
		}
		if err != nil {
			return fmt.Errorf("corrupt metadata %q: %w", it.key(), err)
		}
	}
	return nil
}

// failure remembers the first storage error of the write path. After it the broker
// refuses writes: offsets were handed out for records that may not exist, and
// carrying on could deliver a gap as if it were a message.
type failure struct {
	mu  sync.Mutex
	err error
}

func (f *failure) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *failure) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// now is the broker's clock in milliseconds, the resolution of every stored time.
func (b *Broker) now() time.Time { return b.clock.Now().Truncate(time.Millisecond) }

// SettleStorage flushes what is in memory to tables and waits (up to limit) for
// the compactions that follows. For benchmarks that measure reading apart from the
// background work of the writes before it.
func (b *Broker) SettleStorage(limit time.Duration) error { return b.store.settle(limit) }

// WriteStats describes the write path's group commits since the broker opened.
type WriteStats struct {
	Commits  int64         // group commits that reached the disk
	Messages int64         // messages they carried
	SyncWait time.Duration // time spent waiting for the disk
}

// StorageStats reports the store's size, the engine's write amplification and
// compaction debt, and the disk's free space.
func (b *Broker) StorageStats() (StorageStats, error) {
	if err := b.enter(); err != nil {
		return StorageStats{}, err
	}
	defer b.leave()
	return b.store.stats(), nil
}

// WriteStats reports the write path's counters, for metrics and benchmarks.
func (b *Broker) WriteStats() WriteStats {
	return WriteStats{
		Commits:  b.commits.stats.commits.Load(),
		Messages: b.commits.stats.messages.Load(),
		SyncWait: time.Duration(b.commits.stats.syncWait.Load()),
	}
}
