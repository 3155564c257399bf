// Package broker is Orderly's message broker as a Go library: tenants (instances),
// their credentials, topics and consumer groups, and every message semantic the
// protocol servers expose. The protocol packages translate wire requests into calls
// on a *Broker; the controllers reconcile custom resources into it. It imports
// nothing from the Kubernetes API, the controllers or the protocols.
package broker

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// Sentinel errors. Callers branch on them with errors.Is; protocol servers map them
// to their own error codes.
var (
	// ErrInstanceNotFound means no instance has the given id.
	ErrInstanceNotFound = errors.New("instance not found")
	// ErrInvalidArgument means a request carried a value the broker does not accept;
	// the wrapping error says which.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrClosed means the broker has been closed.
	ErrClosed = errors.New("broker closed")
	// ErrConflict means another owner already declared the object; errors carrying it
	// are *ConflictError.
	ErrConflict = errors.New("owned by another declarer")
)

// ConflictError reports an object declared by another owner.
type ConflictError struct {
	// Kind and Name identify the object, Owner its current owner.
	Kind, Name, Owner string
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
	// holds it, so a concurrent legitimate claim is never overridden.
	PreviousOwner string
	// Credentials are the AccessKey pairs accepted for this instance. An AccessKey id
	// authenticates for one instance only.
	Credentials []Credential
}

// InstanceInfo describes an instance as the broker holds it. It never carries secrets.
type InstanceInfo struct {
	ID           string
	Owner        string
	AccessKeyIDs []string
}

// instance is one tenant. Its fields are guarded by Broker.mu.
type instance struct {
	id          string
	owner       string
	credentials map[string]string // AccessKey id -> secret
}

// Broker is the embedded broker. It is safe for concurrent use.
type Broker struct {
	mu        sync.RWMutex
	closed    bool
	instances map[string]*instance
	// accessKeys maps an AccessKey id to the instance it authenticates for, so a
	// request that names no instance can be resolved from its key alone.
	accessKeys map[string]string
}

// New returns an empty broker.
func New() *Broker {
	return &Broker{
		instances:  make(map[string]*instance),
		accessKeys: make(map[string]string),
	}
}

// EnsureInstance creates the instance or brings an existing one to cfg. It is
// idempotent. An instance held by another owner is refused with a *ConflictError, and
// an AccessKey id already bound to another instance with ErrInvalidArgument, because a
// key authenticates for its own instance only.
func (b *Broker) EnsureInstance(cfg InstanceConfig) error {
	if !instanceIDPattern.MatchString(cfg.ID) {
		return fmt.Errorf("%w: instance id %q must be 1 to 64 characters of [a-zA-Z0-9_-]", ErrInvalidArgument, cfg.ID)
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
	if ok && inst.owner != cfg.Owner && (cfg.PreviousOwner == "" || inst.owner != cfg.PreviousOwner) {
		return &ConflictError{Kind: "instance", Name: cfg.ID, Owner: inst.owner}
	}
	for id := range creds {
		if owner, ok := b.accessKeys[id]; ok && owner != cfg.ID {
			return fmt.Errorf("%w: AccessKey id %q already authenticates for another instance", ErrInvalidArgument, id)
		}
	}
	if !ok {
		inst = &instance{id: cfg.ID}
		b.instances[cfg.ID] = inst
	}
	inst.owner = cfg.Owner
	for id := range inst.credentials {
		if _, keep := creds[id]; !keep {
			delete(b.accessKeys, id)
		}
	}
	for id := range creds {
		b.accessKeys[id] = cfg.ID
	}
	inst.credentials = creds
	return nil
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
	for key := range inst.credentials {
		delete(b.accessKeys, key)
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
	return instanceID, b.instances[instanceID].credentials[accessKeyID], true
}

// Close stops the broker. Later calls fail with ErrClosed.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}

// info describes inst. Lock should be held.
func (inst *instance) info() InstanceInfo {
	keys := make([]string, 0, len(inst.credentials))
	for k := range inst.credentials {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return InstanceInfo{ID: inst.id, Owner: inst.owner, AccessKeyIDs: keys}
}
