# syntax=docker/dockerfile:1
# One image for `legation controller`, `legation authz` and `legation ratelimit` (and the chart's
# `helm test` pod). Envoy runs from the official envoyproxy/envoy image.
#
# Installed offline from a wheelhouse made on the host from uv.lock (the same pins, with hashes,
# as `make venv` installs, without the dev extra), so first:
#
#   make wheelhouse                 # build/image/wheels (+ requirements.txt), build/image/legation
#   docker build -t ghcr.io/legation/legation:0.1.0 .
#
# `make image` does both with buildah (image/build.sh). The base image of both stages is any
# Debian bookworm with CPython 3.11: the official python image by default; `make image` uses a
# Debian base made by mmdebstrap (Debian's python3) when no registry is at hand.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The dependencies first: these layers are rebuilt only when uv.lock changes.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_NO_INDEX=1
# `python3`: /usr/local/bin/python3 in the official image, /usr/bin/python3 in Debian's.
RUN python3 -m venv /opt/legation
COPY build/image/wheels /wheels
RUN /opt/legation/bin/pip install --require-hashes --only-binary=:all: --find-links /wheels \
        -r /wheels/requirements.txt
FROM deps AS build
# A regular (not editable) install: the runtime stage copies the virtualenv and nothing else.
# pip compiles the bytecode here, since the root filesystem is read-only at run time. `pip check`
# proves the lock's runtime subset satisfies legation's requirements; then pip itself goes.
COPY build/image/legation /dist
RUN /opt/legation/bin/pip install --no-deps /dist/legation-*.whl \
    && /opt/legation/bin/pip check \
    && /opt/legation/bin/pip uninstall -q -y pip setuptools \
    && /opt/legation/bin/legation --version

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 legation \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin legation
ENV PATH=/opt/legation/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# controller: xDS 18000, HTTP 8877; authz: gRPC 9001, ops 9101; ratelimit: gRPC 8081, ops 9102
EXPOSE 18000 8877 9001 9101 8081 9102
ENTRYPOINT ["legation"]
CMD ["--help"]
# Last, so that everything above stays cached when only the code changes (files owned by root).
COPY --from=build /opt/legation /opt/legation
