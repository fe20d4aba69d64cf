# The kubetune operator image: control plane only (kopf, kubernetes client, prometheus-client).
# No torch or ML packages: `kubetune[operator]` does not depend on them (import-linter checks).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/kubetune
COPY pyproject.toml README.md constraints.txt ./
COPY operator ./operator
COPY trainer_image/kubetune_trainer/__init__.py ./trainer_image/kubetune_trainer/__init__.py
RUN pip install -c constraints.txt ".[operator]" \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin kubetune

USER 1000
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
