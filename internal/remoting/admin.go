package remoting

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/orderly-dev/orderly/internal/broker"
)

// The admin calls RocketMQ's tools make (2.3, 3.13). Topics are declared through
// Topic resources; these calls only reach what the TCP clients may create
// themselves, and only in an instance that lets them (Instance
// spec.autoCreate.topics). Declared topics are listed but never changed here: a
// change made behind Git's back would be undone by the operator's next repair, so it
// is refused with a remark that says where the topic is declared.

// defaultTopic is the template topic producers route by when their own topic has no
// route yet (2.2).
const defaultTopic = "TBW102"

// defaultTopicQueues is the number of queues the TBW102 route offers; the client
// uses at most its defaultTopicQueueNums (4) of them.
const defaultTopicQueues = 8

// Route permissions (2.2).
const (
	permInherit   = 1
	permReadWrite = 6
)

// isSystemName reports names the broker keeps for itself: retry and dead-letter
// topics and the template topic.
func isSystemName(name string) bool {
	return name == defaultTopic || strings.HasPrefix(name, retryPrefix) || strings.HasPrefix(name, dlqPrefix)
}

// createTopic answers UPDATE_AND_CREATE_TOPIC (3.13).
func (s *Server) createTopic(rc reqContext, req *Command) *Command {
	h := req.ExtFields
	_, name, err := rc.resolveName(h["topic"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	if isSystemName(name) {
		return response(req, codeNoPermission, fmt.Sprintf("%s is a system topic", name))
	}
	queues, err := strconv.Atoi(h["writeQueueNums"])
	if err != nil || queues <= 0 {
		queues = broker.DefaultAutoCreateQueues
	}
	typ := broker.Normal
	if h["order"] == "true" {
		typ = broker.Ordered
	}
	if existing, err := s.Broker.Topic(rc.instance, name); err == nil {
		if existing.Owner != broker.AutoCreatedOwner {
			return response(req, codeNoPermission, fmt.Sprintf("topic %s is declared by a Topic resource; change it there", name))
		}
		if existing.Type != typ || existing.Queues != queues {
			return response(req, codeNoPermission, fmt.Sprintf("topic %s exists as %s with %d queues; this broker does not change topics through admin calls", name, existing.Type, existing.Queues))
		}
		return response(req, codeSuccess, "")
	}
	if _, err := s.Broker.AutoCreateTopic(rc.instance, broker.TopicConfig{Name: name, Type: typ, Queues: queues}); err != nil {
		if errors.Is(err, broker.ErrTopicNotFound) {
			return response(req, codeNoPermission, fmt.Sprintf("instance %s does not let clients create topics: declare a Topic resource, or set the Instance's spec.autoCreate.topics", rc.instance))
		}
		return brokerError(req, err)
	}
	return response(req, codeSuccess, "")
}

// deleteTopic answers DELETE_TOPIC_IN_BROKER and DELETE_TOPIC_IN_NAMESRV (3.13): one
// process is both, so either removes the topic. A topic that is not there is gone
// already, which is success, as for every delete here.
func (s *Server) deleteTopic(rc reqContext, req *Command) *Command {
	_, name, err := rc.resolveName(req.ExtFields["topic"])
	if err != nil {
		return response(req, codeNoPermission, err.Error())
	}
	existing, err := s.Broker.Topic(rc.instance, name)
	switch {
	case err != nil:
		return response(req, codeSuccess, "")
	case existing.System || existing.Owner != broker.AutoCreatedOwner:
		return response(req, codeNoPermission, fmt.Sprintf("topic %s is declared by a Topic resource; delete it there", name))
	}
	if err := s.Broker.DeleteTopic(rc.instance, name, broker.AutoCreatedOwner); err != nil {
		return brokerError(req, err)
	}
	s.Log.Info("Deleted a topic created on first use", "instance", rc.instance, "topic", name)
	return response(req, codeSuccess, "")
}

// topicList answers GET_ALL_TOPIC_LIST_FROM_NAMESERVER (2.3): the instance's topics,
// without the group's retry and dead-letter topics, by their plain names.
func (s *Server) topicList(rc reqContext, req *Command) *Command {
	topics, err := s.Broker.Topics(rc.instance)
	if err != nil {
		return brokerError(req, err)
	}
	names := make([]string, 0, len(topics))
	for _, t := range topics {
		if !t.System {
			names = append(names, t.Name)
		}
	}
	slices.Sort(names)
	body, err := json.Marshal(struct {
		TopicList  []string `json:"topicList"`
		BrokerAddr string   `json:"brokerAddr"`
	}{names, ""})
	if err != nil {
		return response(req, codeSystemError, err.Error())
	}
	res := response(req, codeSuccess, "")
	res.Body = body
	return res
}
