# deskbroker: `make demo` and `make test` both go through the idempotent `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := python3-venv tigervnc-standalone-server tigervnc-tools tigervnc-viewer postgresql postgresql-client \
  slapd ldap-utils samba samba-ad-dc samba-dsdb-modules samba-ad-provision winbind krb5-user \
  ypserv rpcbind libcrypt1 whois openssl util-linux nodejs libxss1 x11-utils $(NPM_PACKAGE) \
  chromium openssh-server xrdp xorgxrdp freerdp2-x11 pgbouncer libvirt-dev pkg-config \
  golang-go golang-github-vmware-govmomi-dev
# Debian's npm conflicts with a NodeSource nodejs, which brings its own npm: ask apt for
# npm only when no npm runs.
NPM_PACKAGE := $(if $(shell command -v npm 2>/dev/null),,npm)
# The OpenID provider the tests run (oidc-provider from npm, pinned by its lock file).
OIDC_PROVIDER := tests/oidc/provider
# Directory daemons the tests start privately: slapd left unconfigured, no system instances
# (ypserv and rpcbind too: the NIS tests run their own in a private mount namespace).
DEBCONF_PRESEED := slapd slapd/no_configuration boolean true\n\
krb5-config krb5-config/default_realm string EXAMPLE.INVALID\n\
krb5-config krb5-config/add_servers_realm string EXAMPLE.INVALID
SYSTEM_SERVICES := slapd samba samba-ad-dc smbd nmbd winbind ypserv yppasswdd ypxfrd rpcbind pgbouncer
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: viewer-assets portal-assets setup system demo test lint typecheck test-sqlite test-postgresql test-sqlite-parallel test-postgresql-parallel test-legs bench docs clean agent

# govmomi's vCenter simulator for the vSphere tests (built below). Defined before the
# setup rule: make expands a rule's prerequisites as it reads them.
VCSIM := build/vcsim

setup: system $(VENV)/.installed $(OIDC_PROVIDER)/node_modules/.installed viewer-assets portal-assets $(VCSIM)

# System packages through apt-get, only when one is missing (apt-get update is slow).
system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  printf '$(DEBCONF_PRESEED)\n' | $$SUDO debconf-set-selections; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  for s in $(SYSTEM_SERVICES); do $$SUDO service $$s stop >/dev/null 2>&1 || true; done; \
	fi

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# govmomi's vCenter simulator, built offline from Debian's Go sources (no module download):
# the vSphere tests start it. Rebuilt only when its main.go changes.
$(VCSIM): tests/vsphere/vcsim/main.go | system
	@mkdir -p build
	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/build/gocache \
	  go build -o $@ ./tests/vsphere/vcsim/

$(OIDC_PROVIDER)/node_modules/.installed: $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The HTML5 viewers the gateway serves (noVNC, xterm.js, guacamole-common-js), pinned by
# web/viewer/package-lock.json and copied into the installed package: no page loads
# anything from another host.
VIEWER := web/viewer
VIEWER_VENDOR := src/deskbroker/gateway/pages/vendor
viewer-assets: $(VIEWER_VENDOR)/.installed

$(VIEWER_VENDOR)/.installed: $(VIEWER)/package-lock.json
	cd $(VIEWER) && npm ci --no-audit --no-fund --loglevel=error
	rm -rf $(VIEWER_VENDOR) && mkdir -p $(VIEWER_VENDOR)/novnc $(VIEWER_VENDOR)/xterm $(VIEWER_VENDOR)/guacamole
	cp -r $(VIEWER)/node_modules/@novnc/novnc/core $(VIEWER)/node_modules/@novnc/novnc/vendor \
	  $(VIEWER)/node_modules/@novnc/novnc/LICENSE.txt $(VIEWER_VENDOR)/novnc/
	cp $(VIEWER)/node_modules/@xterm/xterm/lib/xterm.js $(VIEWER)/node_modules/@xterm/xterm/css/xterm.css \
	  $(VIEWER)/node_modules/@xterm/xterm/LICENSE $(VIEWER_VENDOR)/xterm/
	cp $(VIEWER)/node_modules/guacamole-common-js/dist/esm/guacamole-common.js \
	  $(VIEWER)/node_modules/guacamole-common-js/LICENSE $(VIEWER_VENDOR)/guacamole/
	@touch $@

# The browser assets of the portal, the console and the API docs page (Chart.js, Swagger UI,
# a QR code generator), pinned by web/portal/package-lock.json and copied into the package,
# so no page loads anything from another host. Install scripts are not run (one of them
# only phones home).
PORTAL_NPM := web/portal
PORTAL_VENDOR := src/deskbroker/web/static/vendor
PORTAL_FILES := chart.js/dist/chart.umd.min.js qrcode-generator/dist/qrcode.js \
  swagger-ui-dist/swagger-ui-bundle.js swagger-ui-dist/swagger-ui.css

$(PORTAL_NPM)/node_modules/.installed: $(PORTAL_NPM)/package-lock.json
	cd $(PORTAL_NPM) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

portal-assets: $(PORTAL_NPM)/node_modules/.installed
	@mkdir -p $(PORTAL_VENDOR)
	@for f in $(PORTAL_FILES); do cp $(PORTAL_NPM)/node_modules/$$f $(PORTAL_VENDOR)/; done

demo: setup
	$(VENV)/bin/deskbroker demo

LINT_PATHS := src tests $(wildcard benchmarks scripts)

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) scripts/gen_api_docs.py --check
	$(PY) scripts/gen_state_docs.py --check

# The API reference is generated from the OpenAPI document.
docs: setup
	$(PY) scripts/gen_api_docs.py
	$(PY) scripts/gen_state_docs.py

typecheck: setup
	$(VENV)/bin/mypy

# The suite runs in parallel (docs/architecture.md, "Tests"): TEST_WORKERS pytest-xdist
# workers per database leg, each taking whole test files (a module's servers start once),
# and `make test` runs the two legs at the same time. The tests wait on servers more than
# they compute, so this pays even on 2 cores. Tests marked `serial` (short wall-clock
# bounds) run afterwards, one at a time. TEST_WORKERS=1 runs a leg in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,-p no:xdist)
# The slowest tests are listed at the end of each leg: the suite must stay well under 20 min.
PARALLEL_PART := $(XDIST) -m 'not serial' --durations=15
SERIAL_PART := -p no:xdist -m serial

# $(1) database, $(2) which tests and how. pytest exits 5 when it collected nothing; that
# is not a failure of the code.
define pytest_on
	(DESKBROKER_TEST_DB=$(1) $(PY) -m pytest -q -p no:cacheprovider $(2) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected on $(1)"; rc=0; fi; exit $$rc)
endef

# One whole leg: its parallel part, then its serial part (both run, either fails it).
test-sqlite: setup
	@$(call pytest_on,sqlite,$(PARALLEL_PART)); a=$$?; $(call pytest_on,sqlite,$(SERIAL_PART)); \
	b=$$?; exit $$(( a || b ))

test-postgresql: setup
	@$(call pytest_on,postgresql,$(PARALLEL_PART)); a=$$?; $(call pytest_on,postgresql,$(SERIAL_PART)); \
	b=$$?; exit $$(( a || b ))

test-sqlite-parallel: setup
	@$(call pytest_on,sqlite,$(PARALLEL_PART))

test-postgresql-parallel: setup
	@$(call pytest_on,postgresql,$(PARALLEL_PART))

# Both legs' parallel parts at once (each one's output printed whole when it ends), then
# the serial tests of each leg with nothing else of ours running; fails when any part
# fails, after every part has run.
test-legs: setup
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite-parallel \
	  test-postgresql-parallel; a=$$?; \
	$(call pytest_on,sqlite,$(SERIAL_PART)); b=$$?; \
	$(call pytest_on,postgresql,$(SERIAL_PART)); c=$$?; \
	exit $$(( a || b || c ))

# ruff and mypy side by side (each prints when it ends), then the suite.
test: setup
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint typecheck
	@$(MAKE) --no-print-directory test-legs

# The desktop agent: standard library only, one zipapp that any python3 (3.11+) runs, with
# its systemd unit and an example config (docs/agent.md says how to install them).
AGENT_DIST := dist/agent
agent:
	rm -rf build/agent $(AGENT_DIST) && mkdir -p build/agent $(AGENT_DIST)
	cp -r src/deskbroker_agent build/agent/
	find build/agent -name __pycache__ -prune -exec rm -rf {} +
	$(PYTHON) -m zipapp build/agent -p '/usr/bin/env python3' -m 'deskbroker_agent.service:cli' \
	  -o $(AGENT_DIST)/deskbroker-agent.pyz
	cp packaging/agent/deskbroker-agent.service packaging/agent/deskbroker-agent.conf $(AGENT_DIST)/
	@echo "built $(AGENT_DIST)/deskbroker-agent.pyz"

bench: setup
	$(PY) benchmarks/login.py --json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .deskbroker
