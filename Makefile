# Orderly: a Kubernetes operator that embeds a RocketMQ-compatible message broker.
# `make run` brings up the operator with a local control plane; `make test` runs every test.

IMG ?= orderly:dev
# Tools come from Go modules pinned in this repository; nothing needs to be preinstalled.
CONTROLLER_GEN ?= go tool controller-gen
KUSTOMIZE ?= go tool -modfile=hack/tools/go.mod kustomize
KUBECTL ?= kubectl
# Go test flags, e.g. TEST_FLAGS="-run TestBroker -count=1".
TEST_FLAGS ?=
BENCH ?= .
BENCH_FLAGS ?= -benchtime=2s -count=5
# Benchmarks that build gigabytes of state run once each, in bench-storage.
STORAGE_BENCH = PublishWithBacklog|RestartAfterKill
# Benchmarks that run a control plane and the operator binary: one pass is a run.
SCALE_BENCH = Declare1000TopicsAndGroups

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Display this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate CRDs and RBAC from the API types and kubebuilder markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

.PHONY: envtest
envtest: ## Build etcd, kube-apiserver and kube-controller-manager from Go modules into bin/k8s/ and print the KUBEBUILDER_ASSETS directory.
	@hack/envtest.sh

# Packages whose tests run under the race detector. The rest are tested without
# it: internal/remoting and controllers drive the real rocketmq-client-go v2.1.2,
# which has data races of its own (in its producer shutdown and push consumer)
# that the detector reports inside the client, not in our code.
RACE_PKGS = ./internal/broker ./internal/mqhttp ./internal/consistency ./internal/torture ./internal/clock ./internal/fsyncfloor ./internal/connlimit ./internal/wiretls
# Packages whose tests measure throughput against a rate measured alone in the
# same run: they run after the rest, by themselves, so that other packages' tests
# do not take the cores between the two measurements.
ALONE_PKGS = ./internal/hostile
# How long `make torture` runs the consistency check under faults.
TORTURE_TIME ?= 10m
# How long `make hostile` attacks the operator binary while a good tenant works.
HOSTILE_TIME ?= 3m

.PHONY: test
test: manifests generate fmt vet ## Run all tests, envtest suites included, against binaries built by hack/.
	go test -race -timeout 20m $(TEST_FLAGS) $(RACE_PKGS)
	# Where the store's cache lives: outside the Go heap with cgo, inside without it (the
	# container image). Not under -race, with which Pebble picks either at random.
	go test -count=1 -run '^TestStoreHeapBytesFollowsWhereTheStoreAllocates$$' ./internal/broker
	CGO_ENABLED=0 go test -count=1 -run '^TestStoreHeapBytesFollowsWhereTheStoreAllocates$$' ./internal/broker
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" go test -timeout 20m $(TEST_FLAGS) $$(go list ./... | grep -v -x -F $(foreach p,$(RACE_PKGS) $(ALONE_PKGS),-e github.com/orderly-dev/orderly/$(p:./%=%)))
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" go test -timeout 20m $(TEST_FLAGS) $(ALONE_PKGS)

.PHONY: torture
# Without -race: the short form in `make test` runs under it, and a long run's
# history under the detector's memory overhead would not fit the machine.
torture: ## Run the broker's consistency check under faults for TORTURE_TIME (default 10m); prints the seed, operations, messages, faults and violations.
	go test -run '^TestTorture$$' -count=1 -v -timeout 0 ./internal/torture -torture.time=$(TORTURE_TIME)

.PHONY: hostile
# Without -race: it runs the operator binary as a process of its own, and the
# short form (one window of each) runs in `make test` with the other non-race packages.
hostile: ## Run the hostile-load test for HOSTILE_TIME (default 3m): the binary under slow, malformed and over-quota clients while a good tenant works; prints its throughput, memory, goroutines and sockets.
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" go test -run '^TestHostileLoad$$' -count=1 -v -timeout 0 ./internal/hostile -hostile.time=$(HOSTILE_TIME)

.PHONY: bench
bench: ## Run the Go benchmarks (take medians over BENCH_FLAGS' -count runs).
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" go test -run '^$$' -bench '$(BENCH)' -skip '$(STORAGE_BENCH)|$(SCALE_BENCH)' $(BENCH_FLAGS) ./...
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" go test -run '^$$' -bench '$(SCALE_BENCH)' -benchtime=1x -count=3 -timeout 30m ./controllers/

.PHONY: bench-storage
bench-storage: ## Run the storage-scale benchmarks: a 10-million-message backlog (~10 GiB) and restart after SIGKILL with 1 GiB.
	go test -run '^$$' -bench 'PublishWithBacklog' -benchtime=200000x -count=1 -timeout 60m ./internal/broker/
	go test -run '^$$' -bench 'RestartAfterKill' -benchtime=3x -count=1 -timeout 30m ./internal/broker/

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager binary into bin/orderly.
	go build -o bin/orderly .

.PHONY: run
run: build ## Run the operator with a local control plane and the embedded broker (no cluster needed).
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)"; exec bin/orderly --dev --dev-assets "$$KUBEBUILDER_ASSETS" \
		--metrics-bind-address 127.0.0.1:8080 --health-probe-bind-address 127.0.0.1:8081 \
		--http-bind-address 127.0.0.1:9880 --tcp-bind-address 127.0.0.1:9876 \
		--console-bind-address 127.0.0.1:9890 --pprof-bind-address 127.0.0.1:8082

.PHONY: docker-build
docker-build: ## Build the container image (needs a container engine).
	docker build -t $(IMG) .

.PHONY: docker-push
docker-push: ## Push the container image.
	docker push $(IMG)

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

.PHONY: install
install: manifests ## Install the CRDs into the cluster of the current kubeconfig.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) apply --server-side -f -

.PHONY: uninstall
uninstall: manifests ## Remove the CRDs from the cluster. ignore-not-found=true ignores missing ones.
	$(KUSTOMIZE) build config/crd | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: deploy
deploy: manifests ## Deploy the operator (image IMG) into the cluster of the current kubeconfig.
	rm -rf bin/deploy && mkdir -p bin/deploy && cp -r config bin/deploy/
	cd bin/deploy/config/manager && $(KUSTOMIZE) edit set image controller=$(IMG)
	$(KUSTOMIZE) build bin/deploy/config/default | $(KUBECTL) apply --server-side -f -

.PHONY: undeploy
undeploy: ## Remove the operator from the cluster. ignore-not-found=true ignores missing ones.
	$(KUSTOMIZE) build config/default | $(KUBECTL) delete --ignore-not-found=$(ignore-not-found) -f -
