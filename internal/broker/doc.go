// Package broker is Orderly's message broker as a Go library: tenants (instances),
// their credentials, topics and consumer groups, and every message semantic the
// protocol servers expose. The protocol packages translate wire requests into calls
// on a *Broker; the controllers reconcile custom resources into it. It imports
// nothing from the Kubernetes API, the controllers or the protocols.
//
// Durability: a publish returns only once its message is on disk (fsynced), and
// concurrent publishes share fsyncs (group commit). Consume progress is written
// without waiting for the disk: a machine crash can only cause redelivery.
//
// # Where things are
//
// The package is one flat set of files, one semantic each:
//
//   - broker.go: the Broker, Open (with recovery) and Close; instances and their
//     AccessKey credentials (EnsureInstance, DeleteInstance, LookupAccessKey), the
//     tenancy every other call starts from; metadata records; the storage failure
//     after which the broker refuses writes.
//   - topic.go: topics and their queues, declared and deleted; each queue's
//     offsets and watermarks (next, durable, min, holes, bytes); the wake-up of
//     long polls when messages become deliverable.
//   - group.go: consumer groups, declared and deleted with their retry and
//     dead-letter topics; GroupStats and the group's consumption counters.
//   - message.go: Message, StoredMessage and PublishResult, their validation, the
//     stored record's encoding, message ids, the sharding key's queue.
//   - publish.go: Publish and PublishBatch. prepareAppend resolves the topic,
//     admits the batch past the quota, picks each message's queue and encodes it;
//     applyBatch, on the writer goroutine, hands out sequences and offsets and
//     applies whole batches; madeDurable, on the syncer goroutine, advances the
//     durable watermarks and wakes the long polls once a batch is on disk.
//   - groupcommit.go: the mechanism under them, which knows nothing of what a
//     batch holds: one writer goroutine that takes every publish waiting as one
//     batch, one syncer goroutine that waits for the disk and answers the
//     publishers, one batch in flight, and the write path's statistics.
//   - log.go: the log layer, messageLog: read views (queueView: why a consumer
//     never skips a message), the bounded index scan with its tag filter, the
//     record loader, and the removal of records with their owners: a queue's
//     entries past retention (reclaimQueue), a deleted topic's queues
//     (reapQueue), one record (deleteRecordNow).
//   - read.go: Pull, read budgets, and longPoll, the one long-poll loop of pull,
//     pop and half-message pop.
//   - pop.go: pop-style consumption for HTTP groups, the Broker's side: Pop and
//     Ack resolve the group and its queues, spread a pop over the queues, count
//     deliveries, store the committed offsets, and move a message past its
//     redelivery limit to the dead letters.
//   - popqueue.go: popQueue, one group's state on one queue (nsqd's Channel
//     shape): what is in flight and when each delivery is visible again, what is
//     done, the cursor and the committed offset; taking messages (take), redelivery
//     after the invisibility window, ordered pop (one batch of a queue out at a
//     time), ack, invisibility changes, resets. It owns its lock: only its methods
//     take popQueue.mu.
//   - handle.go: the one codec of receipt and transaction handles.
//   - offsets.go: pull-style consumption for TCP groups: committed offsets,
//     QueueOffsets, OffsetAt, and the orderly consumers' queue locks
//     (LockQueues, UnlockQueues, ReleaseClient). Ordered consumption is the
//     sharding key choosing a queue (publish.go, message.go), then either these
//     locks (TCP) or ordered pop (pop.go, HTTP).
//   - filter.go: subscription filters: tags, or SQL92 expressions over a
//     message's properties (internal/sqlfilter).
//   - txn.go: transactional (half) messages: their stored state, EndTransaction
//     and ResolveTransaction, check-backs (PopHalf, TakeTransactionChecks), the
//     rollback of those unresolved past their deadline.
//   - txnindex.go: the check-back index: unresolved half messages in memory,
//     queued by check-back time per topic and producer group, and by deadline;
//     PendingHalfMessages.
//   - timer.go: delay levels and timer messages: the timer loop delivers each due
//     timer through the writer, which gives it its offset and deletes the timer in
//     one batch.
//   - retention.go: Reclaim and its loop, which has the log remove entries past
//     retention in bounded batches, rolls back expired half messages, and reaps
//     deleted topics in the background, resuming after a restart.
//   - dlq.go: retry and dead-letter topics, SendBack (TCP retries), DeadLetters
//     and Redrive.
//   - quota.go: an instance's Limits: topic, group and connection counts, publish
//     rates, message size; Usage and AcquireConnection.
//   - autocreate.go: topics and groups created on first use.
//   - lookup.go: MessageByID and MessagesByKey, for diagnosis.
//   - browse.go: MessagesBetween (a topic's messages in a time range) and
//     MessageState (a message's place in its queue and its state with each group
//     consuming the topic), for diagnosis.
//   - reset.go: ResetOffsets, a group's consumption of a topic moved to a time,
//     for TCP groups (committed offsets, and consumers moved on their next pull)
//     and HTTP groups (pop state) alike.
//   - keys.go: the key layout of the store, and the rule that every record has one
//     owner at a time.
//   - store.go: the store, the only file that knows the engine is Pebble: write
//     batches, iterators (each reads the store as of one moment), and Pebble's
//     tuning. What the broker relies on of it (durable on return, batches whole
//     or absent after a crash, applied in order, one moment per view, keys in
//     byte order) is written as tests in store_contract_test.go, which take the
//     engine through a harness: another engine behind the same methods runs the
//     same contract.
//
// # Locks
//
// The locks are taken in this order, outermost first: a goroutine holding one
// takes only locks below it. Locks are named type.field; each line says what the
// lock guards.
//
//   - Broker.reapMu: one reaper of deleted topics at a time (reapTopics). Under
//     it the reaper takes txnRegistry.mu for the topic's half messages.
//   - txnRegistry.mu (Broker.txns.mu): the unresolved half messages, their check
//     and deadline queues, and the mutable fields of each halfState. Under it
//     ResolveTransaction takes Broker.mu's read lock, to check the half message's
//     instance before it begins resolving it; nothing takes txnRegistry.mu under
//     Broker.mu.
//   - Broker.mu: the registries (instances, AccessKey ids, topics and groups by
//     id, the id counters, closed) and what is declared of instances, topics and
//     groups, a topic's slice of queues included. Lookups take the read lock,
//     declarations and deletions the write lock. Under it a topic's deletion takes
//     group.mu (to drop the groups' pop state on it) and topic.notifyMu (to end
//     its long polls), a group's or an instance's deletion locks.mu (to release
//     its queue locks), and declarations, publishes and Usage quota.mu.
//   - group.mu: a group's pop state per queue (group.pop) and its pending
//     resets (group.resets). Under it GroupStats and MessageState take each
//     popQueue.mu.
//   - popQueue.mu: one group's pop-style state on one queue.
//
// The other locks take no lock while held: locks.mu (queue locks), quota.mu and
// the quota's rate window, topic.notifyMu, timers.mu (the timer loop's next due
// time), failure.mu and queue.trim. queue.trim serializes what removes entries
// from a queue (retention, re-drives), which write its min, holes and reclaimed
// bytes; it is held with no other broker lock. The store's own locks are below
// every one of these. What is not under a lock has one writer: a queue's next
// offset and byte count belong to the writer goroutine, its durable watermark to
// the syncer, and readers load them atomically.
//
// No function unlocks a lock its caller took, nor returns holding one: each
// function that takes a lock lets it go before it returns. A function named
// ...Locked, or documented as called with a lock held, runs under its caller's
// lock and leaves it held. Broker.mu's read lock is never taken twice by one
// goroutine (a waiting writer would block the second): code under it calls the
// ...Locked helpers rather than queue, queueOf, queueByID or consumerTarget,
// which take it.
//
// No lock is held across a channel operation that can block: a publish hands its
// request to the writer and waits for the disk holding nothing, and under
// Broker.mu the only send is kickReaper's, which never blocks. Publishes and
// calls that use the store register (publishers, calls) under Broker.mu's read
// lock after checking that the broker is open, so Close, which marks it closed
// under the write lock and then waits for them, misses none (SettleStorage, for
// benchmarks, does not register).
//
// Disk writes under a lock:
//
//   - Broker.mu's write lock is held across the synced metadata commits of
//     declarations and deletions (EnsureInstance, EnsureTopic, AutoCreateTopic,
//     EnsureGroup, which stores its retry and dead-letter topics too,
//     DeleteInstance, DeleteTopic, DeleteGroup). Declarations then run one at a
//     time, ids are allocated once, and a declared object enters the registry
//     only once its record is on disk. They are rare, and each holds up publishes
//     and lookups for an fsync or three. A publish never holds Broker.mu across
//     the disk.
//   - queue.trim is held across the synced commit of a re-drive (removeEntry) and
//     retention's unsynced ones (reclaimQueue): each batch writes the queue's trim
//     state as the one before it left it.
//   - Broker.reapMu is held across the reaper's unsynced commits.
//   - group.mu is held across the unsynced commit of a TCP group's offsets by
//     CommitOffset while a reset is pending, and by ResetOffsets: a consumer's
//     commit of its old position and the reset then land in order.
//
// No other lock is held across a write. popQueue.mu is held across a queue view's
// reads, serializing the pops of one group on one queue, which must agree on the
// cursor anyway; group.mu across the read of a committed offset on a queue's first
// use (popState).
package broker
