# syntax=docker/dockerfile:1
# WarriorCoder Arena: one image for the four services.
#
#   docker build -t warriorcoder:0.1.0 .
#   docker run --rm warriorcoder:0.1.0 judge --config /etc/warriorcoder/arena.yaml
#
# The builder makes the wheel and installs it, with the pinned constraints, into a venv; the
# runtime stage gets only that venv on a slim Python (no compiler, no pip), runs as uid 10001 and
# works with a read-only root filesystem (nothing is written outside /tmp and the data dir).
# Pin the base by digest in your registry mirror for reproducible builds.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY proto ./proto
COPY services ./services
# Build the wheel (setuptools from the build isolation), then install it and its dependencies
# (all binary wheels: grpcio, numpy, msgspec, orjson) into the venv that the runtime stage copies.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt /wheels/warriorcoder-*.whl \
 && /opt/venv/bin/pip uninstall -y pip setuptools wheel \
 && /opt/venv/bin/warriorcoder --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="warriorcoder" \
      org.opencontainers.image.description="WarriorCoder Arena services (challenger, responder, judge, aggregator)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 warriorcoder \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin warriorcoder
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 9090
# The service name comes from the Deployment's args: serve challenger|responder|judge|aggregator.
ENTRYPOINT ["warriorcoder", "serve"]
CMD ["--help"]
