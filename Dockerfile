# syntax=docker/dockerfile:1
# One image for `legation controller`, `legation authz` and `legation ratelimit` (and the chart's
# `helm test` pod). Envoy runs from the official envoyproxy/envoy image.
#
#   docker build -t ghcr.io/legation/legation:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/legation
WORKDIR /src
COPY pyproject.toml README.md ./
COPY legation ./legation
COPY services ./services
COPY controller ./controller
# A regular (not editable) install: the runtime stage copies the virtualenv and nothing else.
# pip compiles the bytecode here, since the root filesystem is read-only at run time.
RUN /opt/legation/bin/pip install . \
    && /opt/legation/bin/legation --version

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/legation/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 legation \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin legation
COPY --from=build /opt/legation /opt/legation
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# controller: xDS 18000, HTTP 8877; authz: gRPC 9001, ops 9101; ratelimit: gRPC 8081, ops 9102
EXPOSE 18000 8877 9001 9101 8081 9102
ENTRYPOINT ["legation"]
CMD ["--help"]
