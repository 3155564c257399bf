// Package clientenv prepares a test process for the RocketMQ 5.x Go client, which
// the gRPC endpoint's tests drive: imported for its side effect, before the client.
//
// The client embeds its own generated copy of the apache.rocketmq.v2 protos, as
// this module does (internal/mqgrpc/apiv2); linked into one binary, the second
// copy's registration would panic. The protobuf runtime skips it instead under
// GOLANG_PROTOBUF_REGISTRATION_CONFLICT=ignore, read as each file registers (a
// knob outside its compatibility promise; "warn" is the same with a page of
// warnings). Each copy's generated code keeps working with its own descriptors;
// only lookups by name in the global registry see the first. The client also opens its log file, under the home directory unless
// told otherwise, as it initializes.
//
// Both are set from this package's init, which runs before the client's and the
// protobuf runtime's: Go initializes packages in import-path order among those
// whose imports are initialized, and this one imports only os (the language
// specification, "Package initialization"). Nothing but tests may import it.
package clientenv

import (
	"os"
	"path/filepath"
)

func init() {
	if os.Getenv("GOLANG_PROTOBUF_REGISTRATION_CONFLICT") == "" {
		_ = os.Setenv("GOLANG_PROTOBUF_REGISTRATION_CONFLICT", "ignore")
	}
	if os.Getenv("rocketmq.client.logRoot") == "" {
		_ = os.Setenv("rocketmq.client.logRoot", filepath.Join(os.TempDir(), "orderly-rocketmq-client-logs"))
	}
}
