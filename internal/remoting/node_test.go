package remoting

import (
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
}
