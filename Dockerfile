# syntax=docker/dockerfile:1
# Ridemesh's one image: the three services, the live map's static server and the migrations.
# The command picks the process: `ridemesh serve location|ride|geo --host 0.0.0.0 --port 50051`,
# `ridemesh serve web --host 0.0.0.0 --port 8081`, `ridemesh migrate`. Settings come from
# RIDEMESH_* environment variables (services/server/config.py). Build: `docker build -t ridemesh .`
#
# Base images are pinned to a major/minor line, never `latest`; for reproducible production
# builds pin them by digest too (`python:3.11-slim-bookworm@sha256:...`).

# --- 1. The live map: TypeScript (web/src/gen is generated from protos/ and committed), type-checked
# and bundled by esbuild into web/dist.
FROM node:20-bookworm-slim AS web
WORKDIR /src
# buf (root package.json) regenerates web/src/gen; the page's own packages build it.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/package.json web/package-lock.json web/
RUN npm --prefix web ci --no-audit --no-fund
COPY buf.yaml ./
COPY protos protos
COPY web web
RUN npm --prefix web run build

# --- 2. The Python package (services* and the generated ridemesh* from gen/) in a virtualenv, with
# the runtime packages of uv.lock only (exact versions and hashes; no dev group: no code generator,
# Envoy wheel, mypy, Playwright or benchmark tools). uv itself comes from requirements-uv.txt.
FROM python:3.11-slim-bookworm AS python
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/ridemesh \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
WORKDIR /src
COPY requirements-uv.txt ./
RUN pip install --no-cache-dir --no-deps --require-hashes -r requirements-uv.txt
# Dependencies first (a layer that changes only with the lock), then the project itself.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY gen gen
COPY services services
RUN uv sync --frozen --no-dev --no-editable

# --- 3. The runtime: the virtualenv and the page, run as an unprivileged user.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/ridemesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# /var/lib/ridemesh is the working directory (relative defaults such as .ridemesh/archive land
# there); keys/ is where docker compose shares the development key pair (0755, so Envoy's own
# user can read jwks.json). In Kubernetes the root filesystem is read-only and volumes go there.
RUN groupadd --system --gid 10001 ridemesh \
    && useradd --system --uid 10001 --gid ridemesh --home-dir /var/lib/ridemesh \
       --no-create-home --shell /usr/sbin/nologin ridemesh \
    && install -d -o ridemesh -g ridemesh -m 0755 \
       /var/lib/ridemesh /var/lib/ridemesh/keys /var/lib/ridemesh/archive
COPY --from=python /opt/ridemesh /opt/ridemesh
# services/ops/webapp.py serves WEB_DIST = <the directory holding the `services` package>/web/dist,
# which for this installed package is site-packages/web/dist.
COPY --from=web /src/web/dist /opt/ridemesh/lib/python3.11/site-packages/web/dist
WORKDIR /var/lib/ridemesh
USER 10001:10001
# gRPC (and grpc.health.v1) for the services, HTTP for the page, Prometheus metrics.
EXPOSE 50051 8081 9090
# No image-wide HEALTHCHECK: one image runs different processes (gRPC services, the HTTP page,
# one-shot migrations), so each is checked where it runs: Kubernetes `grpc:`/`httpGet` probes,
# docker-compose.yml's per-service healthchecks.
HEALTHCHECK NONE
ENTRYPOINT ["ridemesh"]
CMD ["--help"]
