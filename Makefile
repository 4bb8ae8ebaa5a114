# make render  - set up everything and render the dev stack with the real Pulumi engine into rendered/
# make test    - lint, type-check and run the unit suite (creates venv/ first), and go test the key provider
# make preview STACK=dev / make up STACK=dev - the real thing, against the current kubeconfig context
# make bench   - time the program under mocks against the import floor, and the engine's preview and up against plain YAML
# make e2e     - the real-node bed: pulumi up, kubectl and workload pods on a cluster whose 3 nodes run Consul 1.16.1 in
#                containerd (root; builds the cluster's programs and Consul once)
# make e2e-day2 - the same bed's other watched day-2 operations (upgrades, scaling, staged upgrades, snapshots; about 40 minutes)
# make cluster-up / make cluster-down - the same cluster, left running for you (KUBECONFIG printed), and its removal
# make restore SNAPSHOT=<file> - restore a scheduled snapshot (current kubectl context)
# make validate-config STACK=prod [IMAGE=...] [NAMESPACE=...] - render the stack and run `consul validate` on every
#                tier's agent config inside the image (default: the stack's), in a pod on the current kubectl context
PYTHON ?= python3
VENV := venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements
STACK ?= dev
RENDER_FLAGS ?=

.PHONY: test lint typecheck unit provider-test bench engine render check-rendered preview up pulumi restore validate-config engine-test consul-binary kube-binaries addon-binaries bed-binaries cluster-up cluster-down e2e e2e-day2 clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@unformatted=$$(gofmt -l provider); if [ -n "$$unformatted" ]; then echo "gofmt: $$unformatted"; exit 1; fi

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The consul-keys provider (provider/), with the engine build's flags so the Go build cache is shared.
provider-test:
	cd provider && CGO_ENABLED=0 go vet -tags osusergo,grpcnotrace ./... && CGO_ENABLED=0 go test -trimpath -tags osusergo,grpcnotrace ./...

test: lint typecheck unit provider-test

bench: $(STAMP) engine
	$(BIN)/python benchmarks/evaluate_program.py
	$(BIN)/python benchmarks/engine_preview.py

engine:
	bash scripts/install-engine.sh

render: $(STAMP) engine
	$(BIN)/python scripts/run_stack.py render --stack $(STACK) $(RENDER_FLAGS)

validate-config: render
	$(BIN)/python scripts/validate_config.py rendered/$(STACK) $(if $(IMAGE),--image $(IMAGE)) $(if $(NAMESPACE),--namespace $(NAMESPACE))

check-rendered: $(STAMP)
	$(BIN)/python scripts/check_rendered.py rendered/$(STACK)

# NEW=1 allows a stack that has no Pulumi.<stack>.yaml yet (a typo is refused otherwise).
preview: $(STAMP) engine
	$(BIN)/python scripts/run_stack.py preview --stack $(STACK) $(if $(NEW),--new)

up: $(STAMP) engine
	$(BIN)/python scripts/run_stack.py up --stack $(STACK) $(if $(NEW),--new)

# The pulumi CLI on the state the targets above use: make pulumi ARGS="config set consul:tls false --stack dev"
pulumi: $(STAMP) engine
	$(BIN)/python scripts/run_stack.py cli $(ARGS)

# Restore a snapshot of the CronJob consul-snapshot on the current kubectl context.
restore:
	@test -n "$(SNAPSHOT)" || { echo "usage: make restore SNAPSHOT=consul-<time>.snap [NAMESPACE=consul]" >&2; exit 2; }
	bash scripts/restore-snapshot.sh "$(SNAPSHOT)" "$(or $(NAMESPACE),consul)"

engine-test: $(STAMP) engine
	$(BIN)/pytest -q tests/engine

consul-binary:
	bash testbed/build-consul.sh

kube-binaries:
	bash testbed/build-kube.sh

addon-binaries:
	bash testbed/build-addons.sh

bed-binaries: consul-binary kube-binaries addon-binaries

cluster-up: $(STAMP) bed-binaries
	$(BIN)/python -m testbed.cluster.bed up

cluster-down: $(STAMP)
	$(BIN)/python -m testbed.cluster.bed down

# The bed's suite in two parts: make e2e (formation, partitions, outages and a rolling restart,
# registration, DNS, refusals, placement; in CI) and make e2e-day2 (the other watched operations:
# upgrades, scaling, staged upgrades, snapshots and recoveries; by hand and on a schedule).
e2e: $(STAMP) engine bed-binaries
	$(BIN)/pytest -v -s -p no:cacheprovider --durations=0 -m "not day2" tests/e2e

e2e-day2: $(STAMP) engine bed-binaries
	$(BIN)/pytest -v -s -p no:cacheprovider --durations=0 -m day2 tests/e2e

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis rendered .pulumi-render testbed/logs
