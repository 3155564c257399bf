package remoting

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/nodeclients"
)

// ali-ons, the Node.js RocketMQ 4.x client, beside rocketmq-client-go: it signs as
// the ONS client does, sends JSON headers with numbers and booleans, and rebalances
// and retries its own way (internal/nodeclients/js/remoting.js says what it checks).
func TestNodeClient(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 4)
	e.group("GID_node", broker.TCP, 0)
	nodeclients.Run(t, "remoting.js", map[string]string{
		"ORDERLY_TCP": e.nameAddr, "ORDERLY_ID": testInstance, "ORDERLY_AK": testAK, "ORDERLY_SK": testSK,
		"TOPIC": "normal", "GROUP": "GID_node",
	}, 2*time.Minute)
	// The body ali-ons sent deflated is stored plain, for every other wire.
	e.group("GID_check", broker.TCP, 0)
	var big []broker.StoredMessage
	for q := range 4 {
		res, err := e.broker.Pull(context.Background(), testInstance, "GID_check", "normal", q, 0, 64, broker.Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.Messages {
			if strings.HasPrefix(string(m.Body), "big:") {
				big = append(big, m)
			}
		}
	}
	if len(big) != 1 || len(big[0].Body) != 20000 || big[0].SysFlag&sysFlagCompress != 0 {
		t.Fatalf("the deflated send is stored as %d messages; want one plain body of 20000 bytes", len(big))
	}
}
