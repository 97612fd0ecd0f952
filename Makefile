# taskfleet — the front door. `make help` lists every target and setting.
SHELL := bash
.SHELLFLAGS := -o pipefail -ec
.DEFAULT_GOAL := help

##@ Settings (make <target> NAME=value)

# The simulated lab to work on: taskfleet-<LAB>-* containers, a free /24 and inventory/<LAB> (or set TASKFLEET_LAB).
LAB ?= local
# Inventory for deploy and the operations: a folder under inventory/ (lab = your machines) or a path; empty = the lab's.
INVENTORY ?=
# Python used to create the control-node virtualenv (3.11+).
PYTHON ?= python3
# Virtualenv holding the runtime, Ansible, Fabric and the test tools.
VENV ?= .venv
# Base image for the taskfleet images; empty = build taskfleet-base from Debian's archive.
BASE_IMAGE ?=
# Job packages for both images: project folders or .whl files (JOBS="examples/primes"); for deploy it replaces taskfleet_job_packages.
JOBS ?=
# Number of simulated worker hosts in the lab.
LAB_WORKERS ?= 3
# Non-empty: lab-down also removes the apt cache volume; teardown and down also journals and authkeys.
PURGE ?=
# Extra arguments for pytest (e.g. PYTEST_ARGS="-k lease -x").
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Extra arguments for ansible-playbook (e.g. ANSIBLE_ARGS="--check --diff").
ANSIBLE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.taskfleet-lock-$(shell sha256sum requirements/dev.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
export ANSIBLE_CONFIG := $(CURDIR)/deploy/ansible.cfg
export PYTHONDONTWRITEBYTECODE := 1

# The end-to-end tier runs on a lab of its own (tests/e2e/conftest.py: e2e, 172.28.20.0/24),
# so `make test` never touches the lab `make demo` made, unless a lab is named on purpose
# (LAB= on the command line or in the environment, or an exported TASKFLEET_LAB).
E2E_LAB_ENV := $(if $(or $(filter-out file undefined,$(origin LAB)),$(TASKFLEET_LAB)),,env -u TASKFLEET_LAB -u TASKFLEET_LAB_SUBNET -u TASKFLEET_LAB_INVENTORY)
# The lab: LAB from the command line, else an exported TASKFLEET_LAB, else local.
ifeq ($(origin LAB),file)
LAB := $(or $(TASKFLEET_LAB),$(LAB))
endif
# TASKFLEET_LAB_SUBNET and TASKFLEET_LAB_INVENTORY override what is derived for a lab: when
# exported, for the lab TASKFLEET_LAB names (a LAB= naming another lab leaves them out);
# when given on the command line, for LAB.
ifneq ($(LAB),$(or $(TASKFLEET_LAB),local))
ifeq ($(origin TASKFLEET_LAB_SUBNET),environment)
TASKFLEET_LAB_SUBNET :=
endif
ifeq ($(origin TASKFLEET_LAB_INVENTORY),environment)
TASKFLEET_LAB_INVENTORY :=
endif
endif
export TASKFLEET_LAB := $(LAB)
export TASKFLEET_LAB_SUBNET TASKFLEET_LAB_INVENTORY
LAB_INVENTORY := $(or $(TASKFLEET_LAB_INVENTORY),inventory/$(LAB))
# INVENTORY=lab means inventory/lab; a value with a slash is a path.
INVENTORY_DIR := $(if $(INVENTORY),$(if $(findstring /,$(INVENTORY)),$(INVENTORY),inventory/$(INVENTORY)),$(LAB_INVENTORY))
LAB_PY := $(BIN)/python -m taskfleet.ops.lab
# JOBS given to make (command line or environment, even empty) replaces the inventory's
# taskfleet_job_packages: ansible-playbook gets it as an extra variable, a JSON list.
comma := ,
space := $(subst ,, )
JOBS_GIVEN := $(filter-out file,$(origin JOBS))
JOBS_EXTRA := $(if $(JOBS_GIVEN),-e '{"taskfleet_job_packages": [$(subst $(space),$(comma),$(foreach j,$(JOBS),"$(j)"))]}')

##@ Help

.PHONY: help
help: ## Show this help: every target, and every setting with its default.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m [NAME=value ...]\n"} \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5); doc = ""; next } \
	  /^# / { doc = substr($$0, 3); next } \
	  /^[A-Z_]+ \?=/ { name = $$0; sub(/ \?=.*/, "", name); value = $$0; sub(/^[^=]*= */, "", value); \
	    printf "  \033[33m%-14s\033[0m %s (default: %s)\n", name, doc, (value == "" ? "empty" : value); doc = ""; next } \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
	  { doc = "" }' $(MAKEFILE_LIST)

##@ Development

$(STAMP): requirements/dev.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found — install Python 3.11+ or set PYTHON=" >&2; exit 1; }
	@echo "==> creating $(VENV) from requirements/dev.lock (first run takes a few minutes)" >&2
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
lint: venv ## The lint tier: ruff check, ruff format --check, mypy (strict), ansible-lint, yamllint.
	$(BIN)/pytest tests/lint --run-lint $(PYTEST_ARGS)

.PHONY: test
test: setup-host venv ## Every tier, one pytest run each: unit, integration, lint, containers, e2e (~30 min).
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)
	$(BIN)/pytest tests/lint --run-lint $(PYTEST_ARGS)
	$(BIN)/pytest tests/containers --run-containers $(PYTEST_ARGS)
	$(E2E_LAB_ENV) $(BIN)/pytest tests/e2e --run-e2e $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## The unit tier only (seconds; no processes, no Docker).
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: venv ## Unit and integration, no Docker (= a bare pytest): the contributor loop.
	$(BIN)/pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: bench
bench: venv ## Throughput benchmark: seed design vs taskfleet vs Pool.map, TLS, master memory, a streamed items file (BENCH_ARGS="--stream-mb 2000").
	$(BIN)/python bench/throughput.py $(BENCH_ARGS)

.PHONY: bench-deploy
bench-deploy: images ## Deploy benchmark on the lab: fresh deploy and idempotent redeploy vs ansible ping.
	$(BIN)/python bench/deploy.py

.PHONY: clean
clean: ## Remove build outputs (.build/); the lab is removed by lab-down.
	rm -rf .build

.PHONY: setup-host
setup-host: ## Install and start what the Docker targets need (root on Debian); else say what to do.
	@.ci/setup-host

# The image and lab targets name this one; the host set-up includes the engine check.
.PHONY: docker-check
docker-check: setup-host

##@ Images

.PHONY: base-image
base-image: docker-check venv ## Build taskfleet-base from Debian's archive (skipped when its inputs are unchanged).
	$(BIN)/python -m taskfleet.ops.images base

.PHONY: images
images: docker-check venv ## Build taskfleet-master and taskfleet-worker with the JOBS packages (tagged by content); writes .build/images.json.
	$(BIN)/python -m taskfleet.ops.images build $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(foreach j,$(JOBS),--job $(j))

##@ Lab (simulated machines)

.PHONY: lab
lab: docker-check venv ## Start the simulated machines of LAB and write inventory/<LAB>/hosts.yml.
	LAB_WORKERS=$(LAB_WORKERS) $(LAB_PY) up

.PHONY: lab-down
lab-down: venv ## Remove every container, volume and network of LAB (the apt cache volume stays; PURGE=1 removes it too).
	$(LAB_PY) down $(if $(PURGE),--purge)

.PHONY: lab-status
lab-status: venv ## Show the hosts of LAB and their state.
	$(LAB_PY) status

##@ Deploy (Ansible)

.PHONY: deploy
deploy: venv ## Deploy master and workers to INVENTORY (default: the lab's), then run the smoke test; JOBS= builds the images with those job packages.
	@[ -d $(INVENTORY_DIR) ] || { echo "make: no inventory at $(INVENTORY_DIR) — run make lab$(if $(filter-out local,$(LAB)), LAB=$(LAB)) first, or copy inventory/lab to inventory/<name> and use INVENTORY=<name>" >&2; exit 1; }
	$(if $(BASE_IMAGE),BASE_IMAGE=$(BASE_IMAGE) )$(BIN)/ansible-playbook -i $(INVENTORY_DIR) deploy/site.yml $(JOBS_EXTRA) $(ANSIBLE_ARGS)

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

.PHONY: demo
demo: ## The whole thing on one computer: images, the lab LAB, deploy, smoke, summary.
	$(MAKE) images lab
	@# The smoke role leaves its result in .build/smoke-<inventory>.json: never show an old one.
	@rm -f .build/smoke-$(notdir $(LAB_INVENTORY)).json
	$(MAKE) deploy INVENTORY=
	@$(LAB_PY) summary

##@ Operations (Fabric)

# status: print JSON instead of tables (JSON=1).
JSON ?=
# dashboard: always open an SSH tunnel to the master host, even when its port is reachable (TUNNEL=1).
TUNNEL ?=
# logs: only this inventory host (HOST=worker1); scale: only this worker host.
HOST ?=
# logs: only lines since this time (SINCE=10m).
SINCE ?=
# logs: keep streaming until Ctrl-C (FOLLOW=1).
FOLLOW ?=
# scale: worker containers per worker host (make scale N=4).
N ?=
# fab-smoke: how many numbers to square.
COUNT ?= 10000

FAB := $(BIN)/fab -r deploy
FAB_INV := --inventory $(INVENTORY_DIR)

# Not echoed, so `make status JSON=1 | jq` reads only JSON (make -s also silences make).
.PHONY: status
status: venv ## Containers, health, restarts per host, the master's view; exit 0 only when healthy (JSON=1).
	@$(FAB) status $(FAB_INV) $(if $(JSON),--json)

.PHONY: dashboard
dashboard: venv ## The master's dashboard URL, or an SSH tunnel to it until Ctrl-C (TUNNEL=1 forces it).
	@$(FAB) dashboard $(FAB_INV) $(if $(TUNNEL),--tunnel)

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
