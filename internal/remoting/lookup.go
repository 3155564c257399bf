package remoting

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// The diagnosis lookups of the 4.x clients and mqadmin (docs/remoting.md,
// "Lookups"): a message by the commit-log offset its offsetMsgId ends with, and
// a topic's messages by key.

// maxQueryMessages bounds what one QUERY_MESSAGE returns, as RocketMQ's broker
// caps a query at 64 messages.
const maxQueryMessages = 64

// viewMessage answers VIEW_MESSAGE_BY_ID: the message stored at the header's
// offset, encoded as a pull delivers it. Java's viewMessage(offsetMsgId) and
// mqadmin queryMsgById send it.
func (s *Server) viewMessage(rc reqContext, c *conn, req *Command) *Command {
	seq, err := strconv.ParseUint(req.ExtFields["offset"], 10, 64)
	if err != nil {
		return response(req, codeSystemError, "bad offset")
	}
	m, err := s.Broker.MessageAt(rc.instance, seq)
	if errors.Is(err, broker.ErrMessageNotFound) {
		// RocketMQ's broker answers a missing message so, and the clients read the
		// code as not found.
		return response(req, codeSystemError, fmt.Sprintf("no message at offset %d", seq))
	}
	if err != nil {
		return brokerError(req, err)
	}
	return s.answerMessages(c, req, []broker.StoredMessage{m}, namer{}, nil)
}

// queryMessage answers QUERY_MESSAGE: up to maxNum (at most 64) of the topic's
// messages with the header's key, stored between beginTimestamp and
// endTimestamp (ms), oldest first; QUERY_NOT_FOUND if there are none. A query by
// the client's own message id (the _UNIQUE_KEY_QUERY flag, for UNIQ_KEY) finds
// nothing: the broker indexes keys, not the ids the clients make up.
func (s *Server) queryMessage(rc reqContext, c *conn, req *Command) *Command {
	h := req.ExtFields
	names, topic, err := rc.resolveName(h["topic"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	notFound := func() *Command {
		res := response(req, codeQueryNotFound, "no message with this key in the time range")
		res.ExtFields = queryHeader()
		return res
	}
	if h["_UNIQUE_KEY_QUERY"] == "true" {
		return notFound()
	}
	max, err := strconv.Atoi(h["maxNum"])
	if err != nil || max <= 0 || max > maxQueryMessages {
		max = maxQueryMessages
	}
	begin, _ := strconv.ParseInt(h["beginTimestamp"], 10, 64)
	end, err := strconv.ParseInt(h["endTimestamp"], 10, 64)
	if err != nil || end <= 0 {
		end = time.Now().Add(time.Hour).UnixMilli()
	}
	found, err := s.Broker.MessagesByKey(rc.instance, topic, h["key"], max)
	if err != nil {
		if errors.Is(err, broker.ErrTopicNotFound) || errors.Is(err, broker.ErrInvalidArgument) {
			return notFound()
		}
		return brokerError(req, err)
	}
	var msgs []broker.StoredMessage
	for _, m := range found {
		if at := m.StoreTime.UnixMilli(); at >= begin && at <= end {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return notFound()
	}
	return s.answerMessages(c, req, msgs, names, queryHeader())
}

// queryHeader is QUERY_MESSAGE's answer header; the clients read its fields but
// use them for nothing here, the index having no separate update time.
func queryHeader() map[string]string {
	return map[string]string{"indexLastUpdateTimestamp": "0", "indexLastUpdatePhyoffset": "0"}
}

// answerMessages answers req with msgs encoded as a pull's body, charging the
// answer to the connection's memory until it is written.
func (s *Server) answerMessages(c *conn, req *Command, msgs []broker.StoredMessage, names namer, ext map[string]string) *Command {
	var body []byte
	for i := range msgs {
		m := &msgs[i]
		var err error
		if body, err = appendRecord(body, m, names.topic(m.Topic), m.Queue, wireProperties(m, names), s.store); err != nil {
			return response(req, codeSystemError, err.Error())
		}
	}
	res := response(req, codeSuccess, "")
	res.ExtFields = ext
	res.Body = body
	mem := &answerMemory{c: c}
	mem.Charge(len(body))
	c.answerHolding(req, res, mem)
	return nil
}
