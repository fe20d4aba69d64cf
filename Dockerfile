# The kubetune operator image: the control plane only (kopf, kubernetes client, prometheus-client).
# Build from the repository root:  docker build -t kubetune-operator .
# No torch or ML packages: the `operator` extra does not depend on them (import-linter keeps the
# code apart, tests/helm checks the extra), so constraints.txt's torch pin is never used here.
# Releases pin the base by digest: --build-arg BASE_DIGEST=@sha256:<as the registry reports it>, with
# --build-arg RELEASE=1 refusing a build without one. Empty here: a digest is never written down
# without being read from the registry.
ARG BASE_DIGEST=""
FROM python:3.11.11-slim-bookworm${BASE_DIGEST}
ARG BASE_DIGEST
ARG RELEASE=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/kubetune
RUN if [ -n "$RELEASE" ] && [ -z "$BASE_DIGEST" ]; then \
        echo "RELEASE=1: pass --build-arg BASE_DIGEST=@sha256:... (the base image by digest)" >&2; exit 1; \
    fi
COPY pyproject.toml README.md constraints.txt locks/operator.txt ./
# The shared API and the control plane; the data plane's source root is not needed to build.
COPY api ./api
COPY operator ./operator
# Exactly the files locks/operator.txt hashes (scripts/lock_images.py), then kubetune itself with the
# locked setuptools; pip check fails the build if the lock ever misses a dependency.
RUN pip install --require-hashes --no-deps -r operator.txt \
    && pip install --no-deps --no-build-isolation . \
    && pip check \
    && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin kubetune

USER 1000
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
