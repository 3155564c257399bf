package mqhttp

import (
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/nodeclients"
)

// The mq-http Node.js SDK, a second client beside the Go SDK: it wraps every text in
// CDATA, sends the XML prolog and namespace, and reads answers with xml2js
// (internal/nodeclients/js/mqhttp.js says what it checks).
func TestNodeSDK(t *testing.T) {
	addr, b := startServer(t, broker.Limits{}, func(*Server) {})
	for _, tc := range []broker.TopicConfig{
		{Name: "ord", Type: broker.Ordered, Queues: 4, Owner: "o"},
		{Name: "txn", Type: broker.Transactional, Queues: 2, Owner: "o"},
	} {
		if _, err := b.EnsureTopic(testInstance, tc); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.EnsureGroup(testInstance, broker.GroupConfig{ID: "GID_all", Protocol: broker.HTTP, Owner: "o"}); err != nil {
		t.Fatal(err)
	}
	nodeclients.Run(t, "mqhttp.js", map[string]string{
		"ORDERLY_HTTP": "http://" + addr, "ORDERLY_ID": testInstance, "ORDERLY_AK": testAK, "ORDERLY_SK": testSK,
		"TOPIC": "t", "ORDERED_TOPIC": "ord", "TXN_TOPIC": "txn", "GROUP": "GID_http", "OTHER_GROUP": "GID_all",
	}, 2*time.Minute)
}
