# kubenova's development loop. `make help` lists the targets.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)
GOFLAGS ?= -buildvcs=false
export GOFLAGS

CONTROLLER_GEN_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
# The ginkgo CLI runs the e2e suite's processes in parallel; its version is the library's.
GINKGO_VERSION ?= $(shell go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
GINKGO := $(BIN)/ginkgo-$(GINKGO_VERSION)
# How many ginkgo processes share the e2e cluster: most of a spec's time is spent waiting on
# guests, so more processes than cores pay off. The disruptive containers run one at a time on a
# second cluster beside them (hack/e2e.sh). E2E_FLAGS go to ginkgo (--focus=..., --seed=N).
E2E_PROCS ?= 4
E2E_FLAGS ?=

# The version stamped into the binaries (the Dockerfile takes it as the build argument VERSION).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/kubenova/kubenova/internal/version.Version=$(VERSION)

# The images `make deploy` runs and `make docker-build` builds.
MANAGER_IMG ?= kubenova/manager:$(VERSION)
AGENT_IMG ?= kubenova/agent:$(VERSION)

# The sandbox image of the test nodes' containerd (make images builds it; no registry serves one).
PAUSE_IMG ?= kubenova.local/pause:1

# Where the e2e suite and `make dev` keep their libvirt hosts, disks and logs.
WORK_DIR ?= /var/lib/kubenova-dev

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs, and the manager's and the agent's roles from their RBAC markers.
	$(CONTROLLER_GEN) crd paths="./api/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=kubenova-manager paths="./controllers/...;./cmd/manager/..." output:rbac:artifacts:config=config/rbac/manager
	$(CONTROLLER_GEN) rbac:roleName=kubenova-agent paths="./internal/agent/..." output:rbac:artifacts:config=config/rbac/agent

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: fmt
fmt: ## Run gofmt.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet (the agent's cgo code included).
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: verify-generated
verify-generated: manifests generate ## Fail if generated files are stale.
	@git diff --exit-code -- config api || { echo "generated files are stale: run make manifests generate"; exit 1; }
	@test -z "$$(git status --porcelain -- config api)" || { git status --porcelain -- config api; echo "untracked generated files: run make manifests generate and commit"; exit 1; }

##@ Test

.PHONY: control-plane
control-plane: ## Build etcd, kube-apiserver, kube-controller-manager and kubectl into bin/ (cached).
	hack/build-control-plane.sh

.PHONY: node-binaries
node-binaries: ## Build the kubelet, kube-scheduler and kube-proxy into bin/ (cached): the deployed profile's real nodes.
	KUBE_BINARIES="kubelet kube-scheduler kube-proxy" hack/build-control-plane.sh

.PHONY: node-packages
node-packages: ## Install containerd, runc, the CNI plugins and debootstrap from Debian packages (real test nodes, images).
	hack/install-node.sh

.PHONY: libvirt
libvirt: ## Install libvirt and QEMU from Debian packages.
	hack/install-libvirt.sh

.PHONY: test-guest
test-guest: ## Build the tiny test guest image into bin/guest.
	hack/build-test-guest.sh $(BIN)/guest

.PHONY: test-unit
test-unit: ## Unit tests and controller suites against a real kube-apiserver (envtest).
	KUBEBUILDER_ASSETS=$(BIN) go test ./api/... ./internal/... ./controllers/... ./hack/... ./test/manifests/... ./test/gitops/... ./test/utils/... -count=1 -timeout=10m

.PHONY: test-chaos
test-chaos: ## Kill the manager and each agent at each step of each operation; an API server outage of a minute; libvirtd down (test/chaos, fake hypervisors, real API server and disks). CHAOS_REPORT=FILE writes the matrix.
	KUBEBUILDER_ASSETS=$(BIN) go test ./test/chaos -count=1 -timeout=30m

.PHONY: test-deployed
test-deployed: images control-plane node-binaries libvirt test-guest ## The deployed profile: make images in real nodes' containerd, make deploy's manifests run by real kubelets (test/deployed).
	DEPLOYED_WORK_DIR=$(WORK_DIR)/deployed KUBENOVA_BIN=$(BIN) go test ./test/deployed -count=1 -timeout=20m -v

.PHONY: test-e2e
test-e2e: build $(GINKGO) ## End-to-end on real libvirt guests: E2E_PROCS specs at a time on one cluster, the disruptive ones beside them on another (hack/e2e.sh); then the manager against a simulated fleet.
	KUBENOVA_BIN=$(BIN) hack/e2e.sh $(GINKGO) $(WORK_DIR) $(E2E_PROCS) $(E2E_FLAGS)
	KUBENOVA_BIN=$(BIN) go test ./test/scale -count=1 -timeout=10m -v

.PHONY: bench
bench: bench-scale bench-guests ## All benchmarks (about 30 minutes on 2 cores).

.PHONY: bench-scale
bench-scale: control-plane build ## The scheduler's Go benchmarks; 1,000 instances on 100 simulated nodes.
	go test ./internal/scheduler -run '^$$' -bench . -benchmem -count=5
	KUBENOVA_BIN=$(BIN) go run ./test/bench/scale --nodes 100 --instances 1000 --runs 3 --work-dir $(WORK_DIR)/bench-scale

.PHONY: bench-scale-large
bench-scale-large: control-plane build ## 10,000 instances on 1,000 simulated nodes, once (the manager restarted if it loses its lease).
	KUBENOVA_BIN=$(BIN) go run ./test/bench/scale --nodes 1000 --instances 10000 --runs 1 --work-dir $(WORK_DIR)/bench-scale-large

.PHONY: bench-guests
bench-guests: libvirt control-plane test-guest build ## Launch, power and image operations and a launch storm on real guests, beside the same done by hand.
	KUBENOVA_BIN=$(BIN) go run ./test/bench/launch --runs 5 --work-dir $(WORK_DIR)/bench
	KUBENOVA_BIN=$(BIN) go run ./test/bench/power --runs 3 --work-dir $(WORK_DIR)/bench-power
	KUBENOVA_BIN=$(BIN) go run ./test/bench/storm --guests 20 --spacing 100ms --runs 3 --work-dir $(WORK_DIR)/bench-storm
	KUBENOVA_BIN=$(BIN) go run ./test/bench/images --runs 3 --work-dir $(WORK_DIR)/bench-images
	KUBENOVA_BIN=$(BIN) go run ./test/bench/migration --runs 5 --work-dir $(WORK_DIR)/bench-migration
	KUBENOVA_BIN=$(BIN) go run ./test/bench/resize --runs 5 --work-dir $(WORK_DIR)/bench-resize

.PHONY: test
test: libvirt control-plane test-guest manifests generate vet test-unit test-chaos test-e2e test-deployed ## Everything: install what is missing, generate, vet, unit, envtest, chaos, e2e and the deployed profile.

##@ Build

.PHONY: build
build: ## Build the manager, the agent and kubectl-nova into bin/.
	CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o $(BIN)/manager ./cmd/manager
	CGO_ENABLED=1 go build -ldflags "$(LDFLAGS)" -o $(BIN)/agent ./cmd/agent
	CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o $(BIN)/kubectl-nova ./cmd/kubectl-nova

# images assembles the images without a registry or a container engine (hack/imagebuild replays
# the Dockerfile's stages on a debootstrap root filesystem), as docker-archive tarballs that
# `ctr -n k8s.io images import` loads into a node's containerd, and the test nodes' pause image.
.PHONY: images
images: build node-packages ## Build the manager's and the agent's images (and a pause image) into bin/images, with no registry and no engine.
	CGO_ENABLED=0 go build -o $(BIN)/pause ./hack/pause
	go build -o $(BIN)/imagebuild ./hack/imagebuild
	$(BIN)/imagebuild --target manager --bin $(BIN) --tag $(MANAGER_IMG) --out $(BIN)/images/manager.tar
	$(BIN)/imagebuild --target agent --bin $(BIN) --tag $(AGENT_IMG) --out $(BIN)/images/agent.tar
	$(BIN)/imagebuild --scratch --file $(BIN)/pause=/pause --entrypoint /pause --user 65535:65535 --tag $(PAUSE_IMG) --out $(BIN)/images/pause.tar

.PHONY: docker-build
docker-build: ## Build the manager's and the agent's images (needs a container engine; none runs on the CI machines).
	docker build --build-arg VERSION=$(VERSION) --target manager -t $(MANAGER_IMG) .
	docker build --build-arg VERSION=$(VERSION) --target agent -t $(AGENT_IMG) .

##@ Deploy

# deploy renders config/default through an overlay (bin/deploy) that sets the images, so that
# no tracked file changes.
.PHONY: deploy
deploy: ## Install kubenova on the current kubeconfig's cluster, with MANAGER_IMG and AGENT_IMG (name:tag).
	mkdir -p $(BIN)/deploy
	@m='$(MANAGER_IMG)'; a='$(AGENT_IMG)'; \
	printf 'resources:\n- ../../config/default\nimages:\n- name: kubenova/manager\n  newName: %s\n  newTag: %s\n- name: kubenova/agent\n  newName: %s\n  newTag: %s\n' \
		"$${m%:*}" "$${m##*:}" "$${a%:*}" "$${a##*:}" > $(BIN)/deploy/kustomization.yaml
	kubectl apply --server-side --field-manager=kubenova-deploy -k $(BIN)/deploy

.PHONY: undeploy
undeploy: ## Remove kubenova's manager, agents, RBAC and policies; users' instances (objects, guests, disks) and the CRDs stay.
	kubectl delete --ignore-not-found -k config/app

# undeploy-crds deletes the CRDs, which deletes every kubenova object there is: only when asked
# in so many words, and only once no Instance is left (deleted while kubenova ran, its guest and
# disks went with it; deleted with the CRD, the guest would run on with nothing to manage it).
.PHONY: undeploy-crds
undeploy-crds: ## Delete kubenova's CRDs and every object of theirs: CONFIRM=delete-every-kubenova-object, and no Instance left.
	@if [ "$(CONFIRM)" != delete-every-kubenova-object ]; then \
		echo "undeploy-crds deletes every Flavor, Image, Snapshot, Migration and Hypervisor: run it with CONFIRM=delete-every-kubenova-object" >&2; exit 1; fi
	@left=$$(kubectl get instances -A --no-headers 2>/dev/null | wc -l); if [ "$$left" -gt 0 ]; then \
		echo "$$left Instance(s) left: delete them while kubenova runs (their guests and disks go with them), then undeploy" >&2; exit 1; fi
	kubectl delete --ignore-not-found -k config/crd

.PHONY: dev
dev: libvirt control-plane test-guest build ## Run a local control plane, the manager and two agents on real libvirt, with sample VMs.
	go build -o $(BIN)/devenv ./hack/devenv
	@# exec, not go run: after Ctrl-C devenv tears down and exits 0, which go run would turn
	@# into exit status 1 and make into an error.
	KUBENOVA_BIN=$(BIN) exec $(BIN)/devenv --work-dir $(WORK_DIR)/dev

##@ Tools

$(CONTROLLER_GEN):
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

$(GINKGO):
	GOBIN=$(BIN)/ginkgo-install go install github.com/onsi/ginkgo/v2/ginkgo@$(GINKGO_VERSION)
	mv $(BIN)/ginkgo-install/ginkgo $(GINKGO)

$(GOLANGCI_LINT):
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
