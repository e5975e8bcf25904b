# syntax=docker/dockerfile:1
# WarriorCoder Arena: one image for the five services.
#
#   docker build -t warriorcoder:0.1.0 .
#   docker run --rm warriorcoder:0.1.0 judge --config /etc/warriorcoder/arena.yaml
#
# The builder makes the wheel and installs it, with the pinned constraints, into a venv; the
# runtime stage gets only that venv on a slim Python (no compiler, no pip), runs as uid 10001 and
# works with a read-only root filesystem (nothing is written outside /tmp and the data dir).
# The verifier's sandbox is bubblewrap (Debian's package, installed in the builder; the runtime
# stage gets only the files that install added) and runs the model-written tests with pytest (a
# runtime dependency of the wheel). docs/sandbox.md says what the sandbox needs from the pod.
#
# Variants: the extras of the wheel to install, as a build argument (pyproject's
# [project.optional-dependencies]); the challenger's diversity gate needs `diversity`:
#
#   docker build -t warriorcoder:0.1.0 .                                        # five services
#   docker build --build-arg EXTRAS=diversity -t warriorcoder:0.1.0-diversity . # + diversity gate
#
# The base is pinned by digest (python 3.11 slim, Debian bookworm). The digest was taken from a
# public Renovate-maintained Dockerfile; Docker Hub was not reachable where it was written, so
# check it once with `docker buildx imagetools inspect` and bump both together.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# bubblewrap and whatever packages its install added (e.g. libcap2), their files gathered under
# /opt/bwrap (directories canonical, so merged-/usr paths land where the runtime has them).
RUN dpkg-query -W -f '${Package}\n' | sort > /tmp/packages-before \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap \
 && dpkg-query -W -f '${Package}\n' | sort > /tmp/packages-after \
 && mkdir /opt/bwrap \
 && for pkg in $(comm -13 /tmp/packages-before /tmp/packages-after); do \
      dpkg -L "$pkg" | while read -r f; do \
        if [ -d "$f" ]; then continue; fi; \
        cp -a --parents "$(realpath "$(dirname "$f")")/$(basename "$f")" /opt/bwrap || exit 1; \
      done || exit 1; \
    done \
 && rm -rf /opt/bwrap/usr/share /var/lib/apt/lists/* \
 && test -x /opt/bwrap/usr/bin/bwrap && /usr/bin/bwrap --version
COPY constraints.txt pyproject.toml README.md ./
COPY proto ./proto
COPY services ./services
# Build the wheel (setuptools from the build isolation), then install it, with the EXTRAS of the
# variant, and its dependencies (all binary wheels: grpcio, numpy, msgspec, orjson; torch for
# `diversity`) into the venv that the runtime stage copies.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt "$(ls /wheels/warriorcoder-*.whl)${EXTRAS:+[${EXTRAS}]}" \
 && /opt/venv/bin/pip uninstall -y pip setuptools wheel \
 && /opt/venv/bin/warriorcoder --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="warriorcoder" \
      org.opencontainers.image.description="WarriorCoder Arena services (challenger, responder, verifier, judge, aggregator)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's pip, setuptools and wheel go: nothing installs packages at run time.
RUN python -m pip uninstall -y pip setuptools wheel \
 && ! python -c "import pip" 2>/dev/null \
 && groupadd --system --gid 10001 warriorcoder \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin warriorcoder
COPY --from=builder /opt/venv /opt/venv
# The sandbox tool, not setuid: as uid 10001 it needs unprivileged user namespaces.
COPY --from=builder /opt/bwrap/ /
RUN ["bwrap", "--version"]
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
USER 10001:10001
EXPOSE 9090
# The service name comes from the Deployment's args: serve challenger|responder|verifier|judge|
# aggregator.
ENTRYPOINT ["warriorcoder", "serve"]
CMD ["--help"]
