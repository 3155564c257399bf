package remoting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// heartbeat registers a client's consumer and producer groups (3.5), before
// answering: the consumer rebalances right after its first heartbeat. A consumer
// group must exist and be a TCP group.
func (s *Server) heartbeat(rc reqContext, c *conn, req *Command) *Command {
	var hb struct {
		ClientID     string `json:"clientID"`
		ProducerData []struct {
			GroupName string `json:"groupName"`
		} `json:"producerDataSet"`
		ConsumerData []struct {
			GroupName     string `json:"groupName"`
			Subscriptions []struct {
				Topic     string `json:"topic"`
				SubString string `json:"subString"`
				ExprType  string `json:"expressionType"`
			} `json:"subscriptionDataSet"`
		} `json:"consumerDataSet"`
	}
	if len(req.Body) > maxHeartbeatBody {
		return response(req, codeSystemError, fmt.Sprintf("a heartbeat of %d bytes; at most %d", len(req.Body), maxHeartbeatBody))
	}
	if err := json.Unmarshal(req.Body, &hb); err != nil {
		return response(req, codeSystemError, "malformed heartbeat: "+err.Error())
	}
	if hb.ClientID == "" {
		hb.ClientID = c.remote
	}
	now := s.Clock.Now()
	var refusals []string
	// Producer groups are registered for check-backs, each costing the housekeeping
	// a look at the half messages: a heartbeat registers a bounded number.
	registered := map[string]bool{}
	var unregistered int
	var reason string
	for _, p := range hb.ProducerData {
		// Producer groups are not namespaced on the wire (3.15).
		names, group, err := rc.resolveName(p.GroupName)
		if err != nil || registered[group] {
			continue
		}
		if len(registered) >= maxProducerGroupsPerHeartbeat {
			err = fmt.Errorf("producer group %q not registered: a heartbeat registers at most %d producer groups", group, maxProducerGroupsPerHeartbeat)
		} else {
			err = s.clients.joinProducer(groupKey{rc.instance, group}, c, names, false)
		}
		if err != nil {
			if unregistered++; reason == "" {
				reason = err.Error()
			}
			continue
		}
		registered[group] = true
	}
	if unregistered > 0 {
		refusals = append(refusals, fmt.Sprintf("%d producer groups not registered (%s)", unregistered, reason))
	}
	if len(hb.ConsumerData) > 0 {
		if err := s.clients.addClientID(c, hb.ClientID); err != nil {
			s.Log.Info("Heartbeat refused", "client", hb.ClientID, "reason", err.Error())
			return response(req, codeSubscriptionMissing, err.Error())
		}
	}
	listed := map[string]bool{}
	if n := len(hb.ConsumerData); n > maxConsumerGroupsPerHeartbeat {
		refusals = append(refusals, fmt.Sprintf("%d consumer groups not registered: a heartbeat registers at most %d", n-maxConsumerGroupsPerHeartbeat, maxConsumerGroupsPerHeartbeat))
		hb.ConsumerData = hb.ConsumerData[:maxConsumerGroupsPerHeartbeat]
	}
	for _, cd := range hb.ConsumerData {
		if n := len(cd.Subscriptions); n > maxSubscriptionsPerGroup {
			refusals = append(refusals, fmt.Sprintf("%d subscriptions of %.64q not registered: a group subscribes to at most %d topics", n-maxSubscriptionsPerGroup, cd.GroupName, maxSubscriptionsPerGroup))
			cd.Subscriptions = cd.Subscriptions[:maxSubscriptionsPerGroup]
		}
		names, group, err := rc.resolveName(cd.GroupName)
		if err != nil {
			refusals = append(refusals, err.Error())
			continue
		}
		if err := s.checkGroup(rc.instance, group); err != nil {
			refusals = append(refusals, err.Error())
			continue
		}
		m := &member{clientID: hb.ClientID, conn: c, names: names, subs: map[string]subscription{}, lastSeen: now}
		for _, sub := range cd.Subscriptions {
			_, topic, err := rc.resolveName(sub.Topic)
			if err != nil {
				refusals = append(refusals, err.Error())
				continue
			}
			f, err := subscriptionFilter(sub.ExprType, sub.SubString)
			if err != nil {
				refusals = append(refusals, err.Error())
				continue
			}
			m.subs[topic] = subscription{expr: sub.SubString, filter: f}
		}
		listed[group] = true
		s.clients.joinConsumer(groupKey{rc.instance, group}, m)
	}
	s.clients.leaveOtherGroups(rc.instance, hb.ClientID, listed)
	if len(refusals) > 0 {
		if len(refusals) > maxRefusals {
			// A heartbeat may list thousands of made-up names: the answer and the log
			// name the first few.
			refusals = append(refusals[:maxRefusals], fmt.Sprintf("and %d more", len(refusals)-maxRefusals))
		}
		s.Log.Info("Heartbeat refused in part", "client", hb.ClientID, "reasons", refusals)
		return response(req, codeSubscriptionMissing, fmt.Sprint(refusals))
	}
	return response(req, codeSuccess, "")
}

// subscriptionFilter compiles a subscription: a tag expression (expressionType
// TAG, or none) or a SQL92 one over the message's properties.
func subscriptionFilter(exprType, expr string) (broker.Filter, error) {
	switch exprType {
	case "", "TAG":
		return broker.ParseTagFilter(expr)
	case "SQL92":
		return broker.ParseSQLFilter(expr)
	}
	return broker.Filter{}, fmt.Errorf("expression type %.32q: TAG or SQL92", exprType)
}

// checkClientConfig answers CHECK_CLIENT_CONFIG, which the Java push consumer
// sends on start for each subscription that is not by tag: SUCCESS if the
// expression compiles, SUBSCRIPTION_PARSE_FAILED with the reason if not (as
// RocketMQ's broker answers).
func (s *Server) checkClientConfig(req *Command) *Command {
	var body struct {
		Subscription struct {
			SubString string `json:"subString"`
			ExprType  string `json:"expressionType"`
		} `json:"subscriptionData"`
	}
	if len(req.Body) > maxHeartbeatBody {
		return response(req, codeSystemError, fmt.Sprintf("a body of %d bytes; at most %d", len(req.Body), maxHeartbeatBody))
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return response(req, codeSystemError, "malformed client config: "+err.Error())
	}
	if _, err := subscriptionFilter(body.Subscription.ExprType, body.Subscription.SubString); err != nil {
		return response(req, codeSubscriptionParse, err.Error())
	}
	return response(req, codeSuccess, "")
}

// maxRefusals bounds the reasons a heartbeat's answer lists.
const maxRefusals = 8

// checkGroup says why a group cannot be consumed over TCP, if it cannot. A group
// that does not exist is created if the instance creates groups on first use.
func (s *Server) checkGroup(instance, group string) error {
	info, err := s.Broker.AutoCreateGroup(instance, group, broker.TCP)
	switch {
	case errors.Is(err, broker.ErrQuotaExceeded):
		return fmt.Errorf("consumer group %q was not created on first use: %w", group, err)
	case err != nil:
		return fmt.Errorf("consumer group %q does not exist in instance %q: declare it with a ConsumerGroup (or let the Instance create groups on first use)", group, instance)
	case info.Protocol != broker.TCP:
		return fmt.Errorf("consumer group %q is an %s group; TCP clients need a ConsumerGroup with protocol TCP", group, info.Protocol)
	}
	return nil
}

// consumerList answers GET_CONSUMER_LIST_BY_GROUP with the live members (3.6.1).
func (s *Server) consumerList(rc reqContext, req *Command) *Command {
	_, group, err := rc.resolveName(req.ExtFields["consumerGroup"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	ids := s.clients.members(groupKey{rc.instance, group})
	if len(ids) == 0 {
		return response(req, codeSystemError, "no live consumer in group "+group)
	}
	body, _ := json.Marshal(map[string][]string{"consumerIdList": ids})
	res := response(req, codeSuccess, "")
	res.Body = body
	return res
}

// queueOf resolves a request's consumer group, topic and queue.
func (rc reqContext) queueOf(ext map[string]string, groupField string) (group, topic string, queue int, err error) {
	if groupField != "" {
		if _, group, err = rc.resolveName(ext[groupField]); err != nil {
			return "", "", 0, err
		}
	}
	if _, topic, err = rc.resolveName(ext["topic"]); err != nil {
		return "", "", 0, err
	}
	queue, err = strconv.Atoi(ext["queueId"])
	if err != nil || queue < 0 {
		return "", "", 0, fmt.Errorf("bad queueId %q", ext["queueId"])
	}
	return group, topic, queue, nil
}

// queryOffset answers QUERY_CONSUMER_OFFSET (3.7). A group that never committed an
// offset on a queue that still holds its first message starts at 0, as RocketMQ's
// broker answers (and as HTTP groups start): messages sent before a consumer first
// started are consumed.
func (s *Server) queryOffset(rc reqContext, req *Command) *Command {
	group, topic, queue, err := rc.queueOf(req.ExtFields, "consumerGroup")
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	offset, found, err := s.Broker.ConsumerOffset(rc.instance, group, topic, queue)
	if err != nil {
		return brokerError(req, err)
	}
	if !found {
		min, _, err := s.Broker.QueueOffsets(rc.instance, topic, queue)
		if err != nil || min > 0 {
			return response(req, codeQueryNotFound, "no committed offset")
		}
		offset = 0
	}
	res := response(req, codeSuccess, "")
	res.ExtFields = map[string]string{"offset": strconv.FormatInt(offset, 10)}
	return res
}

// updateOffset stores a committed offset (3.7).
func (s *Server) updateOffset(rc reqContext, req *Command) *Command {
	group, topic, queue, err := rc.queueOf(req.ExtFields, "consumerGroup")
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	offset, err := strconv.ParseInt(req.ExtFields["commitOffset"], 10, 64)
	if err != nil || offset < 0 {
		return response(req, codeSystemError, "bad commitOffset")
	}
	if err := s.Broker.CommitOffset(rc.instance, group, topic, queue, offset); err != nil {
		return brokerError(req, err)
	}
	return response(req, codeSuccess, "")
}

// offsetQuery answers GET_MAX_OFFSET, GET_MIN_OFFSET and SEARCH_OFFSET_BY_TIMESTAMP
// (3.8).
func (s *Server) offsetQuery(rc reqContext, req *Command) *Command {
	_, topic, queue, err := rc.queueOf(req.ExtFields, "")
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	var offset int64
	switch req.Code {
	case reqSearchOffsetByTime:
		ms, perr := strconv.ParseInt(req.ExtFields["timestamp"], 10, 64)
		if perr != nil {
			return response(req, codeSystemError, "bad timestamp")
		}
		offset, err = s.Broker.OffsetAt(rc.instance, topic, queue, time.UnixMilli(ms))
	default:
		var min, max int64
		min, max, err = s.Broker.QueueOffsets(rc.instance, topic, queue)
		offset = max
		if req.Code == reqGetMinOffset {
			offset = min
		}
	}
	if err != nil {
		return brokerError(req, err)
	}
	res := response(req, codeSuccess, "")
	res.ExtFields = map[string]string{"offset": strconv.FormatInt(offset, 10)}
	return res
}

// pull answers PULL_MESSAGE (3.4), holding it while nothing is there.
func (s *Server) pull(ctx context.Context, rc reqContext, c *conn, req *Command) *Command {
	h := req.ExtFields
	group, topic, queue, err := rc.queueOf(h, "consumerGroup")
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	names, _, _ := rc.resolveName(h["topic"])
	offset, err := strconv.ParseInt(h["queueOffset"], 10, 64)
	if err != nil {
		return response(req, codeSystemError, "bad queueOffset")
	}
	maxMsgs, err := strconv.Atoi(h["maxMsgNums"])
	if err != nil || maxMsgs <= 0 {
		maxMsgs = 32
	}
	maxMsgs = min(maxMsgs, 1024)
	sysFlag, _ := strconv.Atoi(h["sysFlag"])
	if sysFlag&1 != 0 {
		if commit, err := strconv.ParseInt(h["commitOffset"], 10, 64); err == nil && commit >= 0 {
			_ = s.Broker.CommitOffset(rc.instance, group, topic, queue, commit)
		}
	}
	filter, ok := s.clients.subscription(groupKey{rc.instance, group}, c, topic)
	if !ok {
		if err := s.checkGroup(rc.instance, group); err != nil {
			return response(req, codeGroupNotExist, err.Error())
		}
		return response(req, codeSubscriptionMissing, fmt.Sprintf("the group %s has no subscription to %s: send a heartbeat first", group, topic))
	}
	var wait time.Duration
	if sysFlag&2 != 0 {
		suspend, _ := strconv.ParseInt(h["suspendTimeoutMillis"], 10, 64)
		wait = min(time.Duration(suspend)*time.Millisecond, maxPullHold)
	}
	// The records the answer holds are taken from the connection's memory until
	// the answer is written (answerMemory).
	mem := &answerMemory{c: c}
	res, err := s.Broker.Pull(broker.WithReadBudget(ctx, mem), rc.instance, group, topic, queue, offset, maxMsgs, filter, wait)
	if err != nil {
		mem.give()
		return s.readError(req, rc.instance, err)
	}
	code := int16(codeSuccess)
	switch {
	case offset < res.MinOffset || offset > res.MaxOffset:
		code = codePullOffsetMoved
	case len(res.Messages) == 0 && res.NextOffset == offset:
		code = codePullNotFound
	case len(res.Messages) == 0:
		code = codePullRetryImmediate
	}
	out := response(req, code, "")
	out.ExtFields = map[string]string{
		"nextBeginOffset": strconv.FormatInt(res.NextOffset, 10), "minOffset": strconv.FormatInt(res.MinOffset, 10),
		"maxOffset": strconv.FormatInt(res.MaxOffset, 10), "suggestWhichBrokerId": "0",
	}
	if code == codeSuccess {
		var body []byte
		for i := range res.Messages {
			m := &res.Messages[i]
			body, err = appendRecord(body, m, names.topic(m.Topic), m.Queue, wireProperties(m, names), s.store)
			if err != nil {
				mem.give()
				return response(req, codeSystemError, err.Error())
			}
		}
		out.Body = body
	}
	c.answerHolding(req, out, mem)
	return nil
}

// mqWire is a message queue as LOCK_BATCH_MQ carries it; echoed exactly (3.9).
type mqWire struct {
	Topic      string `json:"topic"`
	BrokerName string `json:"brokerName"`
	QueueID    int    `json:"queueId"`
}

// lock answers LOCK_BATCH_MQ and UNLOCK_BATCH_MQ (3.9).
func (s *Server) lock(rc reqContext, req *Command, lock bool) *Command {
	var body struct {
		ConsumerGroup string   `json:"consumerGroup"`
		ClientID      string   `json:"clientId"`
		MQSet         []mqWire `json:"mqSet"`
	}
	if err := json.Unmarshal(req.Body, &body); err != nil {
		return response(req, codeSystemError, "malformed lock request: "+err.Error())
	}
	_, group, err := rc.resolveName(body.ConsumerGroup)
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	refs := make([]broker.QueueRef, 0, len(body.MQSet))
	wire := map[broker.QueueRef]mqWire{}
	for _, mq := range body.MQSet {
		_, topic, err := rc.resolveName(mq.Topic)
		if err != nil || mq.BrokerName != BrokerName {
			continue
		}
		ref := broker.QueueRef{Topic: topic, Queue: mq.QueueID}
		refs = append(refs, ref)
		wire[ref] = mq
	}
	if !lock {
		s.Broker.UnlockQueues(rc.instance, group, body.ClientID, refs)
		return response(req, codeSuccess, "")
	}
	held, err := s.Broker.LockQueues(rc.instance, group, body.ClientID, refs)
	if err != nil {
		return brokerError(req, err)
	}
	if len(held) < len(refs) {
		// A queue still leased to another member, typically one that gave it up in
		// a rebalance without unlocking it (the Go client never unlocks then). The
		// refused client retries only at its next rebalance, up to 20 s later: ask
		// the group to rebalance as soon as the lease can have lapsed.
		s.clients.notifyAfter(groupKey{rc.instance, group}, s.Broker.LockLeaseDuration()+100*time.Millisecond)
	}
	locked := make([]mqWire, 0, len(held))
	for _, ref := range held {
		locked = append(locked, wire[ref])
	}
	out := response(req, codeSuccess, "")
	out.Body, _ = json.Marshal(map[string][]mqWire{"lockOKMQSet": locked})
	return out
}

// sendBack answers CONSUMER_SEND_MSG_BACK (3.10): the message comes back on the
// group's retry topic after its delay, or goes to its dead letters. The client
// counts any answer as success, so the answer is given only once it is stored.
func (s *Server) sendBack(ctx context.Context, rc reqContext, req *Command) *Command {
	h := req.ExtFields
	_, group, err := rc.resolveName(h["group"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	seq, err := strconv.ParseUint(h["offset"], 10, 64)
	if err != nil {
		return response(req, codeSystemError, "bad offset")
	}
	delay, _ := strconv.Atoi(h["delayLevel"])
	// The limit is the ConsumerGroup's maxRedeliveries, declared with the group: the
	// header's maxReconsumeTimes is the client's default (16) unless its code says
	// otherwise, and the group is where operators set it.
	if err := s.Broker.SendBack(ctx, rc.instance, group, seq, delay, 0); err != nil {
		return brokerError(req, err)
	}
	return response(req, codeSuccess, "")
}
