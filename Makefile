# taskfleet — the front door. `make help` lists every target.
SHELL := bash -o pipefail -ec
.DEFAULT_GOAL := help
.SHELLFLAGS := -o pipefail -ec

##@ Settings

# Inventory environment under inventory/ (lab = real machines template, local = the simulated lab).
INVENTORY ?= local
# Python used to create the control-node virtualenv (3.11+).
PYTHON ?= python3
# Virtualenv holding the runtime, Ansible, Fabric and the test tools.
VENV ?= .venv
# Base image for the taskfleet images; empty = build taskfleet-base from Debian's archive.
BASE_IMAGE ?=
# Number of simulated worker hosts in the lab.
LAB_WORKERS ?= 3
# Non-empty: `make lab-down` also removes the lab's apt cache volume.
PURGE ?=
# Extra arguments for pytest (e.g. PYTEST_ARGS="-k lease -x").
PYTEST_ARGS ?=
# Extra arguments for ansible-playbook (e.g. ANSIBLE_ARGS="--check --diff").
ANSIBLE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.taskfleet-lock-$(shell sha256sum requirements/dev.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
INVENTORY_DIR := inventory/$(INVENTORY)
export ANSIBLE_CONFIG := $(CURDIR)/deploy/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

##@ Help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m [INVENTORY=local|lab]\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(STAMP): requirements/dev.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found — install Python 3.11+ or set PYTHON=" >&2; exit 1; }
	@echo "==> creating $(VENV) from requirements/dev.lock (first run takes a few minutes)"
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	@$(BIN)/python -m pip install -q -r requirements/dev.lock
	@$(BIN)/python -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.taskfleet-lock-* && touch $@

.PHONY: venv
venv: $(STAMP) ## Create or reuse the virtualenv (.venv), keyed by a hash of the lock file.

.PHONY: lock
lock: ## Re-resolve requirements/dev.in into requirements/dev.lock.
	@rm -rf .build/lock-venv && $(PYTHON) -m venv .build/lock-venv
	@.build/lock-venv/bin/pip install -q -r requirements/dev.in
	@.build/lock-venv/bin/pip freeze --exclude-editable > requirements/dev.lock
	@rm -rf .build/lock-venv && echo "requirements/dev.lock updated"

.PHONY: lint
lint: venv ## Run ruff, mypy (strict: src/ and the fabfile) and ansible-lint (also part of make test).
	$(BIN)/ruff check src tests bench deploy/fabfile.py
	$(BIN)/mypy
	cd deploy && ../$(BIN)/ansible-lint --offline --profile production

.PHONY: test
test: venv ## Run the whole suite: unit, integration, containers, e2e (needs a Docker engine).
	$(BIN)/pytest tests/unit tests/integration $(PYTEST_ARGS)
	$(BIN)/pytest tests/containers $(PYTEST_ARGS)
	$(BIN)/pytest tests/e2e $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: venv ## Run only unit and integration tests (no Docker).
	$(BIN)/pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: bench
bench: venv ## Throughput benchmark: seed design vs taskfleet vs Pool.map, and master memory.
	$(BIN)/python bench/throughput.py

.PHONY: bench-deploy
bench-deploy: images ## Deploy benchmark on the lab: fresh deploy and idempotent redeploy vs ansible ping.
	$(BIN)/python bench/deploy.py

.PHONY: clean
clean: ## Remove build outputs (.build/); the lab is removed by lab-down.
	rm -rf .build

.PHONY: docker-check
docker-check:
	@command -v docker >/dev/null || { echo "make: docker not found — install Docker (Debian: apt-get install docker.io)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make: the Docker engine does not answer — start it (dockerd, or systemctl start docker)" >&2; exit 1; }

##@ Images

.PHONY: base-image
base-image: docker-check venv ## Build taskfleet-base from Debian's archive (skipped when its inputs are unchanged).
	$(BIN)/python -m taskfleet.ops.images base

.PHONY: images
images: docker-check venv ## Build taskfleet-master and taskfleet-worker (tagged by content); writes .build/images.json.
	$(BIN)/python -m taskfleet.ops.images build $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

##@ Lab (simulated machines)

.PHONY: lab
lab: docker-check venv ## Start the simulated machines and write inventory/local/hosts.yml.
	LAB_WORKERS=$(LAB_WORKERS) $(BIN)/python -m taskfleet.ops.lab up

.PHONY: lab-down
lab-down: venv ## Remove every lab container, volume and network (the apt cache volume stays; PURGE=1 removes it too).
	$(BIN)/python -m taskfleet.ops.lab down $(if $(PURGE),--purge)

.PHONY: lab-status
lab-status: venv ## Show the lab's hosts and their state.
	$(BIN)/python -m taskfleet.ops.lab status

##@ Deploy (Ansible)

.PHONY: deploy
deploy: venv ## Deploy master and workers to INVENTORY, then run the smoke test.
	@[ -d $(INVENTORY_DIR) ] || { echo "make: no inventory at $(INVENTORY_DIR) — use INVENTORY=local (make lab) or copy inventory/lab" >&2; exit 1; }
	$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/site.yml $(ANSIBLE_ARGS)

.PHONY: smoke
smoke: venv ## Run the squares smoke test against INVENTORY's running cluster.
	$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/smoke.yml $(ANSIBLE_ARGS)

.PHONY: teardown
teardown: venv ## Remove taskfleet containers from INVENTORY's hosts (PURGE=1: also journal, authkeys, firewall table).
	$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/teardown.yml $(if $(PURGE),-e taskfleet_teardown_purge=true) $(ANSIBLE_ARGS)

.PHONY: rotate-authkey
rotate-authkey: venv ## Replace INVENTORY's authkey on every host and restart master and workers.
	$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/rotate-authkey.yml $(ANSIBLE_ARGS)

.PHONY: rotate-tls
rotate-tls: venv ## Re-issue INVENTORY's TLS keys and certificates host by host (CA kept; running jobs go on).
	$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/rotate-tls.yml $(ANSIBLE_ARGS)

# The lab's inventory (TASKFLEET_LAB_INVENTORY runs the demo on a second lab) and its smoke report.
DEMO_INVENTORY := $(or $(TASKFLEET_LAB_INVENTORY),inventory/local)
DEMO_REPORT := .build/smoke-$(notdir $(DEMO_INVENTORY)).json

.PHONY: demo
demo: ## The whole thing on one computer: images, lab, deploy, smoke, summary.
	$(MAKE) images lab
	@rm -f $(DEMO_REPORT)
	$(MAKE) deploy INVENTORY=local INVENTORY_DIR=$(DEMO_INVENTORY)
	@# The smoke role leaves its result in .build/smoke-<inventory>.json.
	@$(BIN)/python -c 'import json, sys; r = json.load(open(sys.argv[1])); h = r["hosts"]; \
	  print("\n==> taskfleet demo: OK"); \
	  print("    master        %s" % r["master"]); \
	  print("    worker hosts  %d (%s items)" % (len(h), ", ".join("%s=%s" % kv for kv in sorted(h.items())))); \
	  print("    workers       %d" % len(r["workers"])); \
	  print("    verified      %d of %d squares" % (r["verified"], r["count"])); \
	  print("    speed         %.0f items/s" % r["items_per_s"]); \
	  print("    next: make status | make smoke | make teardown | make lab-down")' $(DEMO_REPORT)

##@ Operations (Fabric)

# Print status as JSON instead of tables (JSON=1).
JSON ?=
# logs: only this inventory host (HOST=worker1); scale: only this worker host.
HOST ?=
# logs: only lines since this time (SINCE=10m); FOLLOW=1 keeps streaming until Ctrl-C.
SINCE ?=
FOLLOW ?=
# scale: worker containers per worker host (make scale N=4).
N ?=
# fab-smoke: how many numbers to square.
COUNT ?= 10000
# down: PURGE=1 also removes the journal volume and the hosts' authkey files.
PURGE ?=

FAB := $(BIN)/fab -r deploy
FAB_INV := --inventory $(INVENTORY_DIR)

.PHONY: status
status: venv ## Containers, health, image tag and uptime per host, plus the master's view (JSON=1).
	$(FAB) status $(FAB_INV) $(if $(JSON),--json)

.PHONY: logs
logs: venv ## Master and worker logs prefixed by host/container (HOST=, SINCE=10m, FOLLOW=1).
	$(FAB) logs $(FAB_INV) $(if $(HOST),--host $(HOST)) $(if $(SINCE),--since $(SINCE)) $(if $(FOLLOW),--follow)

.PHONY: scale
scale: venv ## Set workers per worker host: make scale N=4 [HOST=worker1]; removed workers drain.
	@[ -n "$(N)" ] || { echo "make: scale needs N, e.g. make scale N=4" >&2; exit 2; }
	$(FAB) scale $(N) $(FAB_INV) $(if $(HOST),--host $(HOST))

.PHONY: restart
restart: venv ## Rolling restart: one worker host at a time, the master last (jobs kept).
	$(FAB) restart $(FAB_INV)

.PHONY: fab-smoke
fab-smoke: venv ## The squares smoke test via Fabric on the running cluster (COUNT=10000).
	$(FAB) smoke $(FAB_INV) --count $(COUNT)

.PHONY: down
down: venv ## Remove taskfleet containers on every host (PURGE=1: also journal and authkeys).
	$(FAB) down $(FAB_INV) $(if $(PURGE),--purge)
