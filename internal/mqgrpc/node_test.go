package mqgrpc_test

import (
	"testing"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/nodeclients"
)

// The RocketMQ 5.x Node.js client, a second client beside the Go one: it is built on
// grpc-js, verifies the server's certificate against the roots it is given, and
// orders its calls its own way (internal/nodeclients/js/grpc.js says what it checks).
func TestNodeClient(t *testing.T) {
	e := newEnv(t)
	e.topic("normal", broker.Normal, 4)
	e.topic("ordered", broker.Ordered, 2)
	e.topic("txn", broker.Transactional, 2)
	e.group("GID_node", broker.HTTP, 0)
	e.group("GID_nodesql", broker.HTTP, 0)
	nodeclients.Run(t, "grpc.js", map[string]string{
		"ORDERLY_GRPC": e.endpoint, "ORDERLY_ID": testInstance, "ORDERLY_AK": testAK, "ORDERLY_SK": testSK,
		"TOPIC": "normal", "ORDERED_TOPIC": "ordered", "TXN_TOPIC": "txn", "GROUP": "GID_node", "SQL_GROUP": "GID_nodesql",
		// grpc-js reads its TLS roots from here, not from Node's own CA options.
		"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": caFile,
	}, 2*time.Minute)
}
