package remoting

import (
	"context"
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
func (s *Server) viewMessage(ctx context.Context, rc reqContext, c *conn, req *Command) *Command {
	seq, err := strconv.ParseUint(req.ExtFields["offset"], 10, 64)
	if err != nil {
		return response(req, codeSystemError, "bad offset")
	}
	mem := &answerMemory{c: c}
	m, err := s.Broker.MessageAt(broker.WithReadBudget(ctx, mem), rc.instance, seq)
	if err != nil {
		mem.give()
		if errors.Is(err, broker.ErrMessageNotFound) {
			// RocketMQ's broker answers a missing message so, and the clients read
			// the code as not found.
			return response(req, codeSystemError, fmt.Sprintf("no message at offset %d", seq))
		}
		return s.readError(req, rc.instance, err)
	}
	return s.answerMessages(c, req, []broker.StoredMessage{m}, namer{}, nil, mem)
}

// queryMessage answers QUERY_MESSAGE: up to maxNum (at most 64) of the topic's
// messages with the header's key, stored between beginTimestamp and
// endTimestamp (ms): the newest of them, newest first, as RocketMQ's index
// answers; QUERY_NOT_FOUND if there are none. A query by
// the client's own message id (the _UNIQUE_KEY_QUERY flag, for UNIQ_KEY) finds
// nothing: the broker indexes keys, not the ids the clients make up.
func (s *Server) queryMessage(ctx context.Context, rc reqContext, c *conn, req *Command) *Command {
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
	q := broker.KeyQuery{Key: h["key"], Max: maxQueryMessages, NewestFirst: true}
	if n, err := strconv.Atoi(h["maxNum"]); err == nil && n > 0 && n < maxQueryMessages {
		q.Max = n
	}
	if begin, err := strconv.ParseInt(h["beginTimestamp"], 10, 64); err == nil && begin > 0 {
		q.From = time.UnixMilli(begin)
	}
	if end, err := strconv.ParseInt(h["endTimestamp"], 10, 64); err == nil && end > 0 {
		q.To = time.UnixMilli(end)
	}
	mem := &answerMemory{c: c}
	msgs, err := s.Broker.MessagesByKey(broker.WithReadBudget(ctx, mem), rc.instance, topic, q)
	if err != nil || len(msgs) == 0 {
		mem.give()
		if err == nil || errors.Is(err, broker.ErrTopicNotFound) || errors.Is(err, broker.ErrInvalidArgument) {
			return notFound()
		}
		return s.readError(req, rc.instance, err)
	}
	return s.answerMessages(c, req, msgs, names, queryHeader(), mem)
}

// readError answers a read that failed: nothing for a request whose connection
// closed, SYSTEM_BUSY for one that waited past the frame timeout for memory.
func (s *Server) readError(req *Command, instance string, err error) *Command {
	switch {
	case errors.Is(err, context.Canceled):
		return nil
	case errors.Is(err, errNoMemory):
		s.Broker.NoteThrottled(instance)
		return response(req, codeSystemBusy, err.Error())
	}
	return brokerError(req, err)
}

// queryHeader is QUERY_MESSAGE's answer header; the clients read its fields but
// use them for nothing here, the index having no separate update time.
func queryHeader() map[string]string {
	return map[string]string{"indexLastUpdateTimestamp": "0", "indexLastUpdatePhyoffset": "0"}
}

// answerMessages answers req with msgs encoded as a pull's body. mem holds what
// the read took for them, and at least the answer's size, until it is written.
func (s *Server) answerMessages(c *conn, req *Command, msgs []broker.StoredMessage, names namer, ext map[string]string, mem *answerMemory) *Command {
	var body []byte
	for i := range msgs {
		m := &msgs[i]
		var err error
		if body, err = appendRecord(body, m, names.topic(m.Topic), m.Queue, wireProperties(m, names), s.store); err != nil {
			mem.give()
			return response(req, codeSystemError, err.Error())
		}
	}
	// The read counted the bodies; the answer also holds each record's header,
	// topic and properties (up to 16 KiB a message), charged here as written.
	if d := len(body) - mem.held; d > 0 {
		mem.Charge(d)
	}
	res := response(req, codeSuccess, "")
	res.ExtFields = ext
	res.Body = body
	c.answerHolding(req, res, mem)
	return nil
}
