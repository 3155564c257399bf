package remoting

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"

	"github.com/orderly-dev/orderly/internal/broker"
)

func (e *env) allowAutoCreate(p broker.AutoCreatePolicy) {
	e.t.Helper()
	if err := e.broker.EnsureInstance(broker.InstanceConfig{ID: testInstance, Owner: "o",
		Credentials: []broker.Credential{{AccessKeyID: testAK, AccessKeySecret: testSK}}, AutoCreate: p}); err != nil {
		e.t.Fatal(err)
	}
}

// An instance that opts in gets RocketMQ's first-use creation with the real client:
// the producer routes by TBW102 and its first send creates the topic; a consumer's
// heartbeat creates its group.
func TestAutoCreateOnFirstUse(t *testing.T) {
	e := newEnv(t)
	e.allowAutoCreate(broker.AutoCreatePolicy{Topics: true, Groups: true})
	p := e.producer(producer.WithGroupName("PID_auto"))
	ctx := context.Background()
	for i := range 3 {
		if res, err := p.SendSync(ctx, primitive.NewMessage("Undeclared", []byte{byte('a' + i)})); err != nil || res.Status != primitive.SendOK {
			t.Fatalf("send %d to an undeclared topic: %v %v", i, res, err)
		}
	}
	info, err := e.broker.Topic(testInstance, "Undeclared")
	if err != nil || info.Owner != broker.AutoCreatedOwner || info.Queues != broker.DefaultAutoCreateQueues || info.Messages != 3 {
		t.Fatalf("created topic = %+v, %v", info, err)
	}
	got := e.consume("GID_undeclared", "Undeclared", consumer.MessageSelector{}, consumer.ConsumeSuccess)
	got.wait(t, 20*time.Second, func(ms []*primitive.MessageExt) bool { return len(ms) >= 3 })
	if g, err := e.broker.Group(testInstance, "GID_undeclared"); err != nil || g.Protocol != broker.TCP || g.Owner != broker.AutoCreatedOwner {
		t.Fatalf("created group = %+v, %v", g, err)
	}
}

// Without the opt-in nothing is created: the send fails and no topic appears.
func TestNoAutoCreateByDefault(t *testing.T) {
	e := newEnv(t)
	p := e.producer(producer.WithGroupName("PID_auto"))
	if _, err := p.SendSync(context.Background(), primitive.NewMessage("Undeclared", []byte("x"))); err == nil {
		t.Fatal("a send to an undeclared topic succeeded")
	}
	if _, err := e.broker.Topic(testInstance, "Undeclared"); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Fatalf("topic appeared: %v", err)
	}
	c := e.raw()
	res := c.call(reqHeartbeat, nil, []byte(`{"clientID":"c1","consumerDataSet":[{"groupName":"GID_x","subscriptionDataSet":[]}]}`), testAK, testSK)
	if res.Code != codeSubscriptionMissing || !strings.Contains(res.Remark, "does not exist") {
		t.Fatalf("heartbeat of an undeclared group: %d %q", res.Code, res.Remark)
	}
	if _, err := e.broker.Group(testInstance, "GID_x"); !errors.Is(err, broker.ErrGroupNotFound) {
		t.Fatalf("group appeared: %v", err)
	}
	res = c.call(reqUpdateAndCreateTopic, map[string]string{"topic": "Admin", "writeQueueNums": "8"}, nil, testAK, testSK)
	if res.Code != codeNoPermission || !strings.Contains(res.Remark, "spec.autoCreate.topics") {
		t.Fatalf("admin create without the opt-in: %d %q", res.Code, res.Remark)
	}
}

// The admin calls RocketMQ's tools make: create, list and delete, on topics clients
// may create; declared topics are listed and left alone. They are sent raw and
// signed: the Go client's admin package (v2.1.2) never installs its ACL hook, so it
// sends them unsigned, which this broker refuses as an ACL-enabled RocketMQ does.
func TestAdminTopicCalls(t *testing.T) {
	e := newEnv(t)
	e.allowAutoCreate(broker.AutoCreatePolicy{Topics: true})
	e.topic("Declared", broker.Normal, 2)
	e.group("GID_declared", broker.TCP, 16) // its retry and DLQ topics are not listed
	c := e.raw()
	// The header the Go admin's CreateTopic sends (3.13).
	create := map[string]string{"topic": "Made", "defaultTopic": "defaultTopic", "readQueueNums": "6", "writeQueueNums": "6",
		"perm": "6", "topicFilterType": "SINGLE_TAG", "topicSysFlag": "0", "order": "false"}
	for range 2 { // idempotent
		if res := c.call(reqUpdateAndCreateTopic, create, nil, testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("create: %d %q", res.Code, res.Remark)
		}
	}
	if info, err := e.broker.Topic(testInstance, "Made"); err != nil || info.Queues != 6 || info.Owner != broker.AutoCreatedOwner {
		t.Fatalf("created by admin = %+v, %v", info, err)
	}
	create["topic"], create["order"], create["writeQueueNums"] = testInstance+"%Sorted", "true", "2"
	if res := c.call(reqUpdateAndCreateTopic, create, nil, testAK, testSK); res.Code != codeSuccess {
		t.Fatalf("create ordered: %d %q", res.Code, res.Remark)
	}
	if info, err := e.broker.Topic(testInstance, "Sorted"); err != nil || info.Type != broker.Ordered || info.Queues != 2 {
		t.Fatalf("ordered topic by admin = %+v, %v", info, err)
	}
	res := c.call(reqGetAllTopicList, nil, nil, testAK, testSK)
	var list struct{ TopicList []string }
	if res.Code != codeSuccess || json.Unmarshal(res.Body, &list) != nil || !slices.Equal(list.TopicList, []string{"Declared", "Made", "Sorted"}) {
		t.Fatalf("topic list: %d %s", res.Code, res.Body)
	}
	for _, code := range []int16{reqDeleteTopicInBroker, reqDeleteTopicInNamesrv} {
		if res := c.call(code, map[string]string{"topic": "Made"}, nil, testAK, testSK); res.Code != codeSuccess {
			t.Fatalf("delete %d: %d %q", code, res.Code, res.Remark)
		}
	}
	if _, err := e.broker.Topic(testInstance, "Made"); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Fatalf("deleted topic still there: %v", err)
	}
	for _, tc := range []struct {
		code int16
		ext  map[string]string
		want int16
		says string
	}{
		{reqDeleteTopicInBroker, map[string]string{"topic": "Declared"}, codeNoPermission, "Topic resource"},
		{reqUpdateAndCreateTopic, map[string]string{"topic": "Declared", "writeQueueNums": "2"}, codeNoPermission, "Topic resource"},
		{reqUpdateAndCreateTopic, map[string]string{"topic": "%RETRY%GID_declared"}, codeNoPermission, "system topic"},
		{reqUpdateAndCreateTopic, map[string]string{"topic": "OtherInstance%T"}, codeNoPermission, "namespace"},
		{reqDeleteTopicInNamesrv, map[string]string{"topic": "NeverWas"}, codeSuccess, ""},
	} {
		res := c.call(tc.code, tc.ext, nil, testAK, testSK)
		if res.Code != tc.want || !strings.Contains(res.Remark, tc.says) {
			t.Errorf("%d %v: %d %q", tc.code, tc.ext, res.Code, res.Remark)
		}
	}
	if info, err := e.broker.Topic(testInstance, "Declared"); err != nil || info.Queues != 2 {
		t.Fatalf("declared topic changed: %+v, %v", info, err)
	}
	res = c.call(reqGetAllTopicList, nil, nil, testAK, testSK)
	if res.Code != codeSuccess || json.Unmarshal(res.Body, &list) != nil || !slices.Equal(list.TopicList, []string{"Declared", "Sorted"}) {
		t.Fatalf("list after delete: %d %s", res.Code, res.Body)
	}
}
