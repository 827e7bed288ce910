# deskbroker: `make demo` and `make test` both go through the idempotent `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := python3-venv tigervnc-standalone-server tigervnc-tools postgresql postgresql-client \
  slapd ldap-utils samba samba-ad-dc samba-dsdb-modules samba-ad-provision winbind krb5-user \
  ypserv rpcbind libcrypt1 whois openssl util-linux nodejs $(NPM_PACKAGE)
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
SYSTEM_SERVICES := slapd samba samba-ad-dc smbd nmbd winbind ypserv yppasswdd ypxfrd rpcbind
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system demo test lint typecheck test-sqlite test-postgresql bench docs clean

setup: system $(VENV)/.installed $(OIDC_PROVIDER)/node_modules/.installed

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

$(OIDC_PROVIDER)/node_modules/.installed: $(OIDC_PROVIDER)/package-lock.json
	cd $(OIDC_PROVIDER) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

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

# pytest exits 5 when it collected nothing; that is not a failure of the code.
define pytest_on
	DESKBROKER_TEST_DB=$(1) $(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected on $(1)"; rc=0; fi; exit $$rc
endef

test-sqlite: setup
	@$(call pytest_on,sqlite)

test-postgresql: setup
	@$(call pytest_on,postgresql)

test: lint typecheck test-sqlite test-postgresql

bench: setup
	$(PY) benchmarks/login.py --json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .deskbroker
