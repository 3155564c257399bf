#!/usr/bin/env bash
# gen-grpc.sh regenerates internal/mqgrpc/apiv2, the Go types and service stubs of
# RocketMQ 5.x's gRPC protocol (apache.rocketmq.v2), from the proto files that the
# Node.js client ships under proto/ in its npm package. The generated code is
# committed, so building and CI need neither protoc nor npm; run this only to move
# to other protos or other generator versions (then update docs/grpc.md).
#
# Needs: npm (the registry), protoc (Debian: protobuf-compiler), go. The two Go
# plugins are installed into a temporary directory at the versions below, which
# match google.golang.org/protobuf and google.golang.org/grpc in go.mod.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_PACKAGE=${NODE_PACKAGE:-rocketmq-client-nodejs@1.0.8}
PROTOC_GEN_GO=${PROTOC_GEN_GO:-v1.36.12}
PROTOC_GEN_GO_GRPC=${PROTOC_GEN_GO_GRPC:-v1.6.2}
out="$root/internal/mqgrpc/apiv2"
gopkg=github.com/orderly-dev/orderly/internal/mqgrpc/apiv2

command -v protoc >/dev/null || { echo "gen-grpc: protoc is missing (apt-get install protobuf-compiler)" >&2; exit 1; }
command -v npm >/dev/null || { echo "gen-grpc: npm is missing" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$NODE_PACKAGE" >/dev/null && tar xzf ./*.tgz)
protos="$tmp/package/proto"
[[ -f "$protos/apache/rocketmq/v2/service.proto" ]] || { echo "gen-grpc: $NODE_PACKAGE has no proto/apache/rocketmq/v2/service.proto" >&2; exit 1; }

GOBIN="$tmp/bin" GOFLAGS= go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO"
GOBIN="$tmp/bin" GOFLAGS= go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC"

# The protos declare no go_package: map each file onto the one Go package.
maps=()
for f in definition service; do
	maps+=("--go_opt=Mapache/rocketmq/v2/$f.proto=$gopkg" "--go-grpc_opt=Mapache/rocketmq/v2/$f.proto=$gopkg")
done

rm -f "$out"/*.pb.go
mkdir -p "$out"
PATH="$tmp/bin:$PATH" protoc -I "$protos" \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
	"${maps[@]}" \
	apache/rocketmq/v2/definition.proto apache/rocketmq/v2/service.proto
# source_relative keeps the protos' directories; the package is flat.
mv "$out"/apache/rocketmq/v2/*.pb.go "$out"/
rm -rf "$out/apache"
echo "gen-grpc: generated $(ls "$out"/*.pb.go | wc -l) files in ${out#"$root"/} from $NODE_PACKAGE ($(protoc --version))" >&2
