# The kubetune operator image: the control plane only (kopf, kubernetes client, prometheus-client).
# Build from the repository root:  docker build -t kubetune-operator .
# No torch or ML packages: the `operator` extra does not depend on them (import-linter keeps the
# code apart, tests/helm checks the extra), so constraints.txt's torch pin is never used here.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/kubetune
COPY pyproject.toml README.md constraints.txt ./
# The shared API and the control plane; the data plane's source root is not needed to build.
COPY api ./api
COPY operator ./operator
RUN pip install -c constraints.txt ".[operator]" \
    && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin kubetune

USER 1000
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
