# Ridemesh: `make test` is the one command CI and humans run (install, lint, check-gen, pytest).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
# Python packages come from uv.lock only (exact versions and hashes, runtime and dev). uv itself
# is bootstrapped from requirements-uv.txt (hashed, the version uv.lock pins) and then keeps the
# venv equal to the lock. uv uses this machine's Python, never a downloaded one.
UV := $(VENV)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The uv version uv.lock pins (make lock writes it, hashed, to requirements-uv.txt).
export LOCKED_UV := import tomllib; lock = tomllib.load(open("uv.lock", "rb")); \
	print(next(p["version"] for p in lock["package"] if p["name"] == "uv"))
NPM_STAMP := node_modules/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PG_BIN := /usr/lib/postgresql/15/bin
POSTGIS_CONTROL := /usr/share/postgresql/15/extension/postgis.control
# chromium: the browser end-to-end tests drive Debian's Chromium (no browser download).
APT_PACKAGES := postgresql postgresql-15-postgis-3 redis-server chromium
PROTOC = PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -Iprotos \
	--python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) \
	$$(find protos/ridemesh -name '*.proto' | sort)
# Generated files only; hand-written __init__.py files under gen/ stay.
GENERATED = find $(1) -type f \( -name '*_pb2*.py' -o -name '*_pb2*.pyi' \)
# The live map (web/): its own npm packages; TypeScript generated from protos/ with buf and
# protoc-gen-es, bundled by esbuild into web/dist (served by the mesh, not committed).
WEB_STAMP := web/node_modules/.installed
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) \
	web/index.html web/build.mjs web/tsconfig.json web/package.json
WEB_GEN = PATH="$(CURDIR)/web/node_modules/.bin:$$PATH" node_modules/.bin/buf generate \
	--template web/buf.gen.yaml
# The seed's design as a benchmark baseline: a Node.js Socket.io relay with the Redis adapter.
SOCKETIO_STAMP := bench/baselines/socketio/node_modules/.installed
# bench/stream.py's default load generator: Node.js on @grpc/grpc-js (bench/grpcjs/).
GRPCJS_STAMP := bench/grpcjs/node_modules/.installed
SCENARIO ?= compare
PYTEST_ARGS ?= -q --durations=10
ARGS ?=

.PHONY: install python check-lock lock system-packages web gen check-gen envoy-configs lint test \
	run screenshot bench clean distclean

install: system-packages python $(NPM_STAMP) web $(SOCKETIO_STAMP) $(GRPCJS_STAMP)

system-packages:
	@if command -v redis-server >/dev/null && command -v chromium >/dev/null \
	    && test -x $(PG_BIN)/initdb \
	    && test -f $(POSTGIS_CONTROL); then \
	  echo "system packages: present"; \
	else \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(APT_PACKAGES); \
	fi
	@# kubectl renders the Kustomize manifests in the tests; Debian's kubernetes-client when absent
	@# (it would clash with another kubectl package, so only then).
	@command -v kubectl >/dev/null || { $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y kubernetes-client; }

$(UV):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-deps --require-hashes -r requirements-uv.txt

# Exactly what uv.lock says, every time (uv takes a second when nothing changed): packages
# installed by hand are removed, missing ones added. --frozen: never re-resolve here.
python: $(UV)
	$(UV) sync --frozen --quiet

# Fails when pyproject.toml asks for something uv.lock does not hold, or the venv is not the lock.
check-lock: python
	@$(UV) lock --check --offline --quiet 2>/dev/null || { echo "uv.lock does not match \
	pyproject.toml: run 'make lock', review the diff of uv.lock and commit both" >&2; exit 1; }
	@$(UV) sync --frozen --check --quiet 2>/dev/null || { echo "the venv differs from \
	uv.lock: run 'make install'" >&2; exit 1; }
	@echo "uv.lock matches pyproject.toml and the venv"

# Re-resolves on purpose: `make lock` keeps every version it can, `make lock ARGS=--upgrade`
# (or ARGS='--upgrade-package redis') moves them. Review `git diff uv.lock`, then commit.
lock: $(UV)
	$(UV) lock $(ARGS)
	echo "uv==$$($(PY) -c "$$LOCKED_UV")" | $(UV) pip compile - --quiet \
	  --generate-hashes --no-header --output-file requirements-uv.txt
	$(UV) sync --frozen

$(NPM_STAMP): package.json $(wildcard package-lock.json)
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; \
	else npm install --no-audit --no-fund; fi
	touch $@

$(WEB_STAMP): web/package.json web/package-lock.json $(NPM_STAMP)
	cd web && npm ci --no-audit --no-fund
	touch $@

# Rewrites the committed deploy-time Envoy configs (deploy/compose, k8s/base/config) from envoy/;
# the tests fail while they differ from what the renderer produces.
envoy-configs: python
	$(PY) -m services.ops.mesh.deploy

$(SOCKETIO_STAMP): bench/baselines/socketio/package.json bench/baselines/socketio/package-lock.json
	cd bench/baselines/socketio && npm ci --no-audit --no-fund
	touch $@

$(GRPCJS_STAMP): bench/grpcjs/package.json bench/grpcjs/package-lock.json
	cd bench/grpcjs && npm ci --no-audit --no-fund
	touch $@

# Type-checks (tsc --noEmit) and bundles; reruns only when a source changed.
web/dist/index.html: $(WEB_STAMP) $(WEB_SOURCES)
	cd web && npm run build

web: web/dist/index.html

gen: python $(WEB_STAMP)
	$(call GENERATED,gen) -delete
	$(call PROTOC,gen)
	$(WEB_GEN)

check-gen: python $(WEB_STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cp -r gen/. "$$tmp"; \
	$(call GENERATED,"$$tmp") -delete; \
	$(call PROTOC,"$$tmp"); \
	if ! diff -r -x __pycache__ gen "$$tmp"; then \
	  echo "gen/ is stale: run 'make gen' and commit the result" >&2; exit 1; \
	fi; \
	$(WEB_GEN) -o "$$tmp/ts"; \
	if ! diff -r web/src/gen "$$tmp/ts/web/src/gen"; then \
	  echo "web/src/gen is stale: run 'make gen' and commit the result" >&2; exit 1; \
	fi; \
	echo "gen/ and web/src/gen are up to date"

lint: python $(NPM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	npx --no-install buf lint
	@if git rev-parse --verify --quiet main >/dev/null \
	    && git cat-file -e main:protos 2>/dev/null; then \
	  npx --no-install buf breaking --against '.git#branch=main'; \
	else \
	  echo "buf breaking: skipped (no protos/ committed on branch main yet)"; \
	fi

# Each run gets its own base temp directory: pytest's shared /tmp/pytest-of-$USER keeps only the
# three newest runs, so a second run at the same time would delete this one's server data.
test: install check-lock lint check-gen
	@tmp=$$(mktemp -d /tmp/ridemesh-test.XXXXXX); rc=0; \
	$(PY) -m pytest $(PYTEST_ARGS) --basetemp="$$tmp/pytest" || rc=$$?; \
	rm -rf "$$tmp"; exit $$rc

# The mesh with a simulated city and the live map at http://127.0.0.1:8080/ (ARGS=--no-demo, or
# RIDEMESH_DEMO=0, for none).
run: install
	$(VENV)/bin/ridemesh up $(ARGS)

# One benchmark scenario (bench/run.py lists them: smoke, streams-1000/5000/10000, compare,
# nearby, track, ingest); JSON and plots go to docs/bench/.
bench: install
	$(PY) -m bench.run $(SCENARIO)

# Runs the browser test and keeps its last screenshot as the README's picture.
screenshot: install
	RIDEMESH_SCREENSHOT=$(CURDIR)/docs/live-map.png $(PY) -m pytest -q tests/e2e/test_live_map.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o \
	  -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) node_modules web/node_modules web/dist bench/baselines/socketio/node_modules \
	  bench/grpcjs/node_modules .ridemesh
