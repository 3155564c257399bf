package broker

import (
	"errors"
	"fmt"
)

// AutoCreatePolicy says what a protocol endpoint may create on first use.
type AutoCreatePolicy struct {
	Topics bool
	Groups bool
}

// AutoCreatedOwner owns the topics and groups created on first use. A declarer that
// later declares one of them adopts it (its configuration wins where it may change,
// as on any declaration), so an application started before its Topic was applied
// ends up with the declared topic, not a conflict.
const AutoCreatedOwner = "orderly.dev/auto-created"

// Defaults for topics created on first use: RocketMQ creates them from TBW102 with
// min(4, TBW102's queues) queues, and a client asks for 4 unless configured.
const (
	DefaultAutoCreateQueues = 4
	maxAutoCreateQueues     = 64
)

// AutoCreateTopic returns the topic, creating it with cfg if it does not exist and
// the instance allows topics to be created on first use. cfg.Owner is ignored: the
// topic is AutoCreatedOwner's until a declarer adopts it. A topic that exists is
// returned as it is, whoever declared it. An instance that does not allow it gets
// ErrTopicNotFound, as if auto-creation did not exist.
func (b *Broker) AutoCreateTopic(instanceID string, cfg TopicConfig) (TopicInfo, error) {
	if cfg.Queues == 0 {
		cfg.Queues = DefaultAutoCreateQueues
	}
	cfg.Queues = min(cfg.Queues, maxAutoCreateQueues)
	cfg.Owner = AutoCreatedOwner
	if err := validateTopicConfig(&cfg); err != nil {
		return TopicInfo{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return TopicInfo{}, err
	}
	if t, ok := inst.topics[cfg.Name]; ok {
		return t.info(), nil
	}
	if !inst.autoCreate.Topics {
		return TopicInfo{}, fmt.Errorf("%w: topic %q does not exist in instance %q, which does not create topics on first use", ErrTopicNotFound, cfg.Name, instanceID)
	}
	b.log.Info("Creating a topic on first use", "instance", instanceID, "topic", cfg.Name, "type", cfg.Type, "queues", cfg.Queues)
	return b.ensureTopicLocked(inst, cfg, false)
}

// AutoCreateGroup returns the group, creating it for protocol if it does not exist
// and the instance allows groups to be created on first use; see AutoCreateTopic.
func (b *Broker) AutoCreateGroup(instanceID, id string, protocol Protocol) (GroupInfo, error) {
	b.mu.RLock()
	inst, err := b.instanceLocked(instanceID)
	var g *group
	allowed := false
	if err == nil {
		g, allowed = inst.groups[id], inst.autoCreate.Groups
	}
	b.mu.RUnlock()
	switch {
	case err != nil:
		return GroupInfo{}, err
	case g != nil:
		return g.info(), nil
	case !allowed:
		return GroupInfo{}, fmt.Errorf("%w: group %q does not exist in instance %q, which does not create groups on first use", ErrGroupNotFound, id, instanceID)
	}
	info, err := b.EnsureGroup(instanceID, GroupConfig{ID: id, Protocol: protocol, Owner: AutoCreatedOwner})
	var conflict *ConflictError
	if errors.As(err, &conflict) {
		// Declared between the look and the creation: the declaration stands.
		return b.Group(instanceID, id)
	}
	if err == nil {
		b.log.Info("Created a consumer group on first use", "instance", instanceID, "group", id, "protocol", protocol)
	}
	return info, err
}

// AutoCreatePolicyOf returns the instance's policy.
func (b *Broker) AutoCreatePolicyOf(instanceID string) (AutoCreatePolicy, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	inst, err := b.instanceLocked(instanceID)
	if err != nil {
		return AutoCreatePolicy{}, err
	}
	return inst.autoCreate, nil
}
