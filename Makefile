# Quantum core kernel: one entry point for users, developers and CI.
#   make deploy   set up this machine, start the lab host, deploy the kernel onto it
#   make test     lint + kernel tests + every Molecule scenario (what CI runs)
# Every target runs with the project venv's bin/ first on PATH (Molecule shells out to
# ansible-config & co.).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV    := .venv
PYTHON  ?= python3
STAMP   := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Molecule and ansible-lint write caches here; keep them out of $HOME and out of git.
export ANSIBLE_HOME := $(CURDIR)/.ansible
export PY_COLORS := 1
export ANSIBLE_FORCE_COLOR := 1

LAB       := quantum-lab
REPORT    := evidence/$(LAB)/latest/ACTIVATION_REPORT.md
TIMED     := scripts/lab/timed.sh
SCENARIOS := $(sort $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))
# default first, then the others in name order
SCENARIOS := $(filter default,$(SCENARIOS)) $(filter-out default,$(SCENARIOS))
KERNEL    := files/kernel
PY_EXTRA  := scripts/lab molecule roles tests

.PHONY: help venv constraints host-setup lab-image lab lab-down deploy test lint test-kernel test-controller \
        molecule molecule-lane-a molecule-lane-b molecule-lane-c bench clean

help:
	@echo "make deploy       host set-up, venv, lab image, lab host, lab prepare + playbooks/deploy.yml"
	@echo "make test         lint, kernel pytest (real redis-server), every Molecule scenario"
	@echo "make venv         project venv in $(VENV) (pinned by constraints.txt)"
	@echo "make host-setup   apt packages + /etc/containers/containers.conf (prints what changes)"
	@echo "make lab-image    build localhost/quantum-lab (cached by input hash)"
	@echo "make lab          start the lab host container $(LAB); make lab-down removes it"
	@echo "make lint | test-kernel | test-controller | molecule | bench | clean | constraints"
	@echo "             (lint includes the alert rules: render check, promtool check + test rules)"

# --- venv ----------------------------------------------------------------------------------------
venv: $(STAMP)

$(STAMP): requirements-dev.txt constraints.txt $(KERNEL)/pyproject.toml
	@test -x $(VENV)/bin/python || { echo "venv: creating $(VENV) with $$(command -v $(PYTHON))"; $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '$(KERNEL)[dev]'
	@touch $@
	@echo "venv: $(VENV) ready (ansible-core $$($(VENV)/bin/python -c 'from ansible.release import __version__ as v; print(v)'))"

# Regenerate constraints.txt from a clean venv (needs the package index).
constraints:
	rm -rf build/constraints-venv
	$(PYTHON) -m venv build/constraints-venv
	build/constraints-venv/bin/python -m pip install -q -r requirements-dev.txt './$(KERNEL)[dev]'
	{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; \
	  build/constraints-venv/bin/python -m pip freeze --exclude quantum-core-kernel; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/constraints-venv

# --- lab -----------------------------------------------------------------------------------------
host-setup:
	scripts/lab/host_setup.sh

lab-image:
	scripts/lab/build_image.sh

lab: lab-image
	scripts/lab/lab_up.sh

lab-down:
	scripts/lab/lab_down.sh

deploy: host-setup venv lab
	@if [[ ! -f playbooks/deploy.yml ]]; then \
	  echo "deploy: playbooks/deploy.yml does not exist yet - the lab host $(LAB) is up and can be"; \
	  echo "deploy: prepared, but there is nothing to deploy. Not done."; exit 1; fi
	ansible-playbook -i inventory/lab playbooks/lab_prepare.yml
	ansible-playbook -i inventory/lab playbooks/deploy.yml
	@# Lab only: run the reference worker/router against the fake exchange, demonstrate one
	@# intent published twice = one order, gate holds and a restart, then re-render the report.
	ansible-playbook -i inventory/lab playbooks/lab_pipeline.yml
	ansible-playbook -i inventory/lab playbooks/lab_demo.yml
	ansible-playbook -i inventory/lab playbooks/report.yml
	@if [[ -f $(REPORT) ]]; then \
	  echo; echo "==== activation report: $(CURDIR)/$(REPORT) ===="; echo; cat $(REPORT); \
	else echo "deploy: no activation report at $(REPORT)" >&2; exit 1; fi

# --- tests ---------------------------------------------------------------------------------------
# Each stage is timed; the table is printed at the end whether the run passed or not, and the
# first failing stage fails the whole target. The venv (mostly downloads) and the image build
# (mostly debootstrap) run side by side: on a cold machine that saves about a minute.
test: export TIMINGS_FILE := $(CURDIR)/build/timings.tsv
test:
	@mkdir -p build; : > $(TIMINGS_FILE)
	@trap '$(TIMED) --report' EXIT; \
	  $(TIMED) "venv + lab-image (parallel)" $(MAKE) --no-print-directory -j2 venv lab-image && \
	  $(MAKE) --no-print-directory lint && \
	  $(MAKE) --no-print-directory -j2 test-kernel test-controller && \
	  $(MAKE) --no-print-directory molecule

lint: venv
	$(TIMED) ansible-lint ansible-lint --profile production
	$(TIMED) yamllint yamllint --strict .
	$(TIMED) ruff-check ruff check $(KERNEL) $(PY_EXTRA)
	$(TIMED) ruff-format ruff format --check $(KERNEL) $(PY_EXTRA)
	$(TIMED) mypy bash -c 'cd $(KERNEL) && mypy'
	$(TIMED) alert-rules scripts/monitoring/test_rules.sh

# pytest exits 5 when it collects nothing; that fails here like any other non-zero exit.
test-kernel: venv
	@command -v redis-server >/dev/null || { echo "test-kernel: redis-server not on PATH (make host-setup)" >&2; exit 1; }
	$(TIMED) kernel-pytest bash -c 'cd $(KERNEL) && pytest -p no:cacheprovider -q'

# The roles' controller-side tests (no container: the wheelhouse built for other platforms).
test-controller: venv
	$(TIMED) controller-pytest pytest -p no:cacheprovider -q tests

molecule: venv lab-image
	@test -n "$(strip $(SCENARIOS))" || { echo "molecule: no scenarios found" >&2; exit 1; }
	@for s in $(SCENARIOS); do \
	  ls molecule/$$s/tests/test_*.py >/dev/null 2>&1 || { \
	    echo "molecule: scenario $$s has no molecule/$$s/tests/test_*.py; its verify would pass empty" >&2; exit 1; }; \
	done
	@$(MAKE) --no-print-directory -j3 molecule-lane-a molecule-lane-b molecule-lane-c

# Lanes side by side (each scenario has its own instance, quantum-lab-<scenario>): most of a
# scenario's time is waiting on systemd, Redis, SSH and Prometheus, so lanes on two cores take
# far less than one after another. Every line is prefixed with its scenario; a lane stops at its first failure
# and the other lane finishes, so both failures (if any) are in the log.
# Three lanes: the SSH and fleet scenarios (each ~10 min, mostly SSH round trips and four hosts'
# systemd) would otherwise double the longest lane.
LANE_A := $(filter $(SCENARIOS),default live)
LANE_C := $(filter $(SCENARIOS),ssh fleet)
LANE_B := $(filter-out $(LANE_A) $(LANE_C),$(SCENARIOS))
molecule-lane-a molecule-lane-b molecule-lane-c: molecule-lane-%:
	@for s in $(LANE_$(shell echo $* | tr a-z A-Z)); do \
	  $(TIMED) "molecule $$s" molecule test -s $$s 2>&1 | sed -u "s/^/[$$s] /" || exit $$?; \
	done

bench: venv
	cd $(KERNEL) && python bench/bench_kernel.py

clean:
	-for c in $$(podman ps -a --filter label=owner=molecule --format '{{.Names}}' 2>/dev/null); do podman rm -f -t 5 $$c; done
	rm -rf $(VENV) build .ansible .cache .pytest_cache .ruff_cache .mypy_cache
	rm -rf $(KERNEL)/build $(KERNEL)/.pytest_cache $(KERNEL)/.ruff_cache $(KERNEL)/.mypy_cache $(KERNEL)/.hypothesis
