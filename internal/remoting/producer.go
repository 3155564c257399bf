package remoting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/compression"
)

// brokerError answers a request with the protocol's code for a broker error.
func brokerError(req *Command, err error) *Command {
	code := int16(codeSystemError)
	switch {
	case errors.Is(err, broker.ErrTopicNotFound), errors.Is(err, broker.ErrInstanceNotFound):
		code = codeTopicNotExist
	case errors.Is(err, broker.ErrGroupNotFound):
		code = codeGroupNotExist
	case errors.Is(err, broker.ErrWrongProtocol):
		code = codeNoPermission
	case errors.Is(err, broker.ErrMessageType), errors.Is(err, broker.ErrInvalidArgument):
		code = codeMessageIllegal
	case errors.Is(err, broker.ErrThrottled):
		// Flow control: the clients back off on SYSTEM_BUSY, where they would
		// retry SYSTEM_ERROR at once.
		code = codeSystemBusy
	case errors.Is(err, broker.ErrQuotaExceeded):
		// A count the instance may not pass (topics, groups created on first use):
		// not transient, so not SYSTEM_BUSY.
		code = codeNoPermission
	}
	return response(req, code, err.Error())
}

// routeInfo answers GET_ROUTEINFO_BY_TOPIC (2.2): the one broker, the topic's queues,
// readable and writable. A group's retry topic is routed as soon as the group
// exists, before any heartbeat, so that retries are consumed at once.
func (s *Server) routeInfo(rc reqContext, req *Command) *Command {
	_, name, err := rc.resolveName(req.ExtFields["topic"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	info, err := s.Broker.Topic(rc.instance, name)
	perm := permReadWrite
	if err != nil && name == defaultTopic {
		// A producer whose topic has no route sends by TBW102's route with
		// defaultTopic=TBW102, and the broker creates the topic (2.2). The route
		// exists only where sending creates topics.
		if policy, _ := s.Broker.AutoCreatePolicyOf(rc.instance); policy.Topics {
			info, err, perm = broker.TopicInfo{Queues: defaultTopicQueues}, nil, permReadWrite|permInherit
		}
	}
	if err != nil {
		return response(req, codeTopicNotExist, fmt.Sprintf("No topic route info in name server for the topic: %s", req.ExtFields["topic"]))
	}
	type queueData struct {
		BrokerName     string `json:"brokerName"`
		ReadQueueNums  int    `json:"readQueueNums"`
		WriteQueueNums int    `json:"writeQueueNums"`
		Perm           int    `json:"perm"`
		TopicSysFlag   int    `json:"topicSysFlag"`
	}
	type brokerData struct {
		Cluster     string            `json:"cluster"`
		BrokerName  string            `json:"brokerName"`
		BrokerAddrs map[string]string `json:"brokerAddrs"`
	}
	// Compact JSON: the client splits brokerAddrs as a string (2.2).
	body, err := json.Marshal(struct {
		QueueDatas        []queueData       `json:"queueDatas"`
		BrokerDatas       []brokerData      `json:"brokerDatas"`
		FilterServerTable map[string]string `json:"filterServerTable"`
	}{
		QueueDatas:        []queueData{{BrokerName: BrokerName, ReadQueueNums: info.Queues, WriteQueueNums: info.Queues, Perm: perm}},
		BrokerDatas:       []brokerData{{Cluster: clusterName, BrokerName: BrokerName, BrokerAddrs: map[string]string{"0": s.Advertise}}},
		FilterServerTable: map[string]string{},
	})
	if err != nil {
		return response(req, codeSystemError, err.Error())
	}
	res := response(req, codeSuccess, "")
	res.Body = body
	return res
}

// send stores a SEND_MESSAGE, SEND_MESSAGE_V2 or SEND_BATCH_MESSAGE (3.1). mem is
// what the request's frame holds, which a compressed body's inflating adds to.
func (s *Server) send(ctx context.Context, rc reqContext, c *conn, req *Command, batch bool, mem *frameMemory) *Command {
	h := req.ExtFields
	if req.Code != reqSendMessage {
		// V2 and batch headers use single letters (3.1.2).
		h = map[string]string{"producerGroup": h["a"], "topic": h["b"], "defaultTopicQueueNums": h["d"], "queueId": h["e"], "sysFlag": h["f"],
			"bornTimestamp": h["g"], "flag": h["h"], "properties": h["i"], "reconsumeTimes": h["j"], "maxReconsumeTimes": h["l"]}
	}
	names, topic, err := rc.resolveName(h["topic"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	queue, err := strconv.Atoi(h["queueId"])
	if err != nil || queue < 0 {
		queue = broker.AnyQueue
	}
	sysFlag, _ := strconv.ParseInt(h["sysFlag"], 10, 32)
	flag, _ := strconv.ParseInt(h["flag"], 10, 32)
	bornMs, _ := strconv.ParseInt(h["bornTimestamp"], 10, 64)
	reconsume, _ := strconv.ParseInt(h["reconsumeTimes"], 10, 32)
	body := req.Body
	if sysFlag&sysFlagCompress != 0 {
		// Stored plain, for every wire to deliver as sent.
		if body, err = s.inflate(rc.instance, body, sysFlag, batch, mem); err != nil {
			if errors.Is(err, errNoMemory) {
				s.Broker.NoteThrottled(rc.instance)
				return response(req, codeSystemBusy, err.Error())
			}
			return response(req, codeMessageIllegal, err.Error())
		}
		sysFlag &^= sysFlagCompress | sysFlagCompressType
	}
	now := s.Clock.Now()
	fill := func(m *broker.Message) {
		applyDeliveryTime(m, now)
		m.Queue = queue
		m.SysFlag = int32(sysFlag) &^ sysFlagTxnMask
		if !batch {
			m.Flag = int32(flag)
		}
		if bornMs > 0 {
			m.BornAt = time.UnixMilli(bornMs)
		}
		m.BornHost = c.remote
		m.ReconsumeTimes = int32(reconsume)
	}

	var msgs []broker.Message
	if len(h["properties"]) > maxWireProperties {
		return response(req, codeMessageIllegal, fmt.Sprintf("properties of %d bytes; at most %d", len(h["properties"]), maxWireProperties))
	}
	if batch {
		if msgs, err = decodeBatch(body); err != nil {
			return response(req, codeMessageIllegal, err.Error())
		}
	} else {
		m := messageFromWire(body, h["properties"])
		if m.Properties[propTranMsg] == "true" || sysFlag&sysFlagTxnMask == sysFlagPrepared {
			m.Transactional = true
			m.ProducerGroup = m.Properties[propProducer]
			if m.ProducerGroup == "" {
				m.ProducerGroup = h["producerGroup"]
			}
			if secs, err := strconv.Atoi(m.Properties[propCheckImmune]); err == nil && secs > 0 {
				m.CheckImmunity = time.Duration(secs) * time.Second
			}
			// The connection that sent a half message is a check-back target even
			// before its producer's first heartbeat (3.5, 7.24).
			if err := s.clients.joinProducer(groupKey{rc.instance, m.ProducerGroup}, c, names, true); err != nil {
				// Stored all the same: the producer ends the transaction itself, and
				// a check-back goes to a connection that registered the group.
				s.Log.V(1).Info("Not registering a producer group for check-backs", "client", c.remote, "reason", err.Error())
			}
		}
		msgs = []broker.Message{m}
	}
	for i := range msgs {
		fill(&msgs[i])
	}

	results, err := s.publish(ctx, rc.instance, topic, msgs)
	if errors.Is(err, broker.ErrTopicNotFound) && !isSystemName(topic) {
		// Created on first use where the instance allows it, with the queues the
		// client asks for, as RocketMQ's broker does from TBW102.
		queues, _ := strconv.Atoi(h["defaultTopicQueueNums"])
		_, cerr := s.Broker.AutoCreateTopic(rc.instance, broker.TopicConfig{Name: topic, Queues: max(queues, 0)})
		switch {
		case cerr == nil:
			results, err = s.publish(ctx, rc.instance, topic, msgs)
		case errors.Is(cerr, broker.ErrQuotaExceeded):
			err = fmt.Errorf("topic %q was not created on first use: %w", topic, cerr)
		}
	}
	if err != nil {
		return brokerError(req, err)
	}
	ids := make([]string, len(results))
	for i, r := range results {
		ids[i] = r.ID
	}
	// A delayed or half message has no queue offset yet; RocketMQ reports one of its
	// schedule or half queue, which producers only echo back. The commit-log offset
	// inside msgId is what identifies it here.
	offset := max(results[0].Offset, 0)
	res := response(req, codeSuccess, "")
	res.ExtFields = map[string]string{
		"msgId": strings.Join(ids, ","), "queueId": strconv.Itoa(results[0].Queue),
		"queueOffset": strconv.FormatInt(offset, 10), "MSG_REGION": "DefaultRegion", "TRACE_ON": "false",
	}
	return res
}

// inflate returns a body sent compressed, inflated within the broker's largest body
// and the memory the request may hold.
func (s *Server) inflate(instance string, body []byte, sysFlag int64, batch bool, mem *frameMemory) ([]byte, error) {
	if batch {
		// No client compresses a batch: the 4.x clients compress single messages
		// only, and a batch's own encoding has no room to say so.
		return nil, errors.New("a batch marked compressed; clients compress single messages only")
	}
	format, err := compressionOf(sysFlag)
	if err != nil {
		return nil, err
	}
	plain, err := compression.Decompress(format, body, broker.MaxBodySize, inflateBudget{mem, instance})
	if errors.Is(err, compression.ErrTooLarge) {
		return nil, fmt.Errorf("the body inflates past %d bytes", broker.MaxBodySize)
	}
	return plain, err
}

// inflateBudget is the memory a body inflates in: the request's, alongside its
// frame's, given back with it.
type inflateBudget struct {
	mem      *frameMemory
	instance string
}

func (b inflateBudget) Take(n int) error { return b.mem.take(b.instance, n) }
func (b inflateBudget) Give(n int)       { b.mem.giveBack(n) }

// publish stores msgs on the topic, one or a batch.
func (s *Server) publish(ctx context.Context, instance, topic string, msgs []broker.Message) ([]broker.PublishResult, error) {
	ctx = broker.WithWire(ctx, broker.WireTCP)
	if len(msgs) == 1 {
		res, err := s.Broker.Publish(ctx, instance, topic, msgs[0])
		return []broker.PublishResult{res}, err
	}
	return s.Broker.PublishBatch(ctx, instance, topic, msgs)
}

// endTransaction commits or rolls back a half message by its commit-log offset
// (3.11). The client sends it one way and reads no answer.
func (s *Server) endTransaction(rc reqContext, req *Command) *Command {
	h := req.ExtFields
	seq, err := strconv.ParseUint(h["commitLogOffset"], 10, 64)
	if err != nil {
		return response(req, codeSystemError, "commitLogOffset is not a number")
	}
	var commit bool
	switch h["commitOrRollback"] {
	case "8":
		commit = true
	case "12":
	default:
		return nil // unknown: the message stays pending and is checked back
	}
	if err := s.Broker.ResolveTransaction(rc.instance, seq, h["producerGroup"], commit); err != nil {
		s.Log.Info("End of transaction refused", "producerGroup", h["producerGroup"], "offset", seq, "reason", err.Error())
		return brokerError(req, err)
	}
	return response(req, codeSuccess, "")
}

// sendCheckBacks asks a connected producer of each group about its half messages
// whose check-back is due (3.12). It never waits on a client: a check-back goes to
// the first connection of the group, in turn, whose outbound queue has room, and is
// dropped if none has (the broker asks again after broker.CheckInterval).
func (s *Server) sendCheckBacks(ctx context.Context) {
	now := s.Clock.Now()
	for key, conns := range s.clients.dueProducers(now) {
		if ctx.Err() != nil {
			return
		}
		due, err := s.Broker.TakeTransactionChecks(key.instance, key.group, 64)
		s.clients.checked(key, err == nil && len(due) > 0, now)
		if err != nil || len(due) == 0 {
			continue
		}
		for i, d := range due {
			uniq := d.Properties[propUniqKey]
			if uniq == "" {
				uniq = d.ID
			}
			ext := map[string]string{
				"tranStateTableOffset": "0", "commitLogOffset": strconv.FormatUint(d.Seq, 10),
				"msgId": uniq, "transactionId": uniq, "offsetMsgId": d.ID,
			}
			sent := false
			for j := range conns {
				c := conns[(i+j)%len(conns)]
				names := s.clients.producerNames(key, c)
				props := wireProperties(&d.StoredMessage, names)
				props[propProducer] = key.group
				props[propTranMsg] = "true"
				body, err := appendRecord(nil, &d.StoredMessage, names.topic(d.Topic), d.Queue, props, s.store)
				if err != nil {
					s.Log.Error(err, "Cannot encode a check-back", "id", d.ID)
					break
				}
				if c.request(reqCheckTransaction, ext, body) == nil {
					sent = true
					break
				}
			}
			if !sent {
				s.Log.V(1).Info("Dropping a check-back: no connection of its producer group takes it now", "producerGroup", key.group, "id", d.ID)
			}
		}
	}
}
