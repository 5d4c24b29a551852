# syntax=docker/dockerfile:1
#
# omics-watcher container image.
#
#   docker build -t omics-watcher:0.1.0 .
#   docker run -d --name omics-watcher -p 9477:9477 \
#     -v omics-watcher-state:/var/lib/omics-watcher \
#     -e TENCENTCLOUD_SECRET_ID -e TENCENTCLOUD_SECRET_KEY \
#     --read-only --tmpfs /tmp omics-watcher:0.1.0
#
# Two stages: the builder makes a wheel of this repository and installs it with its
# dependencies into a virtual environment; the runtime stage copies only that environment.
# The runtime runs as uid/gid 10001, writes nothing outside /var/lib/omics-watcher (a volume,
# the SQLite state) and /tmp, so it works with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/omics-watcher
# Dependencies first, read from pyproject.toml, so that editing the source reuses this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
 && /opt/omics-watcher/bin/pip install --requirement /tmp/requirements.txt
COPY watcher ./watcher
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/omics-watcher/bin/pip install --no-deps /wheels/omics_watcher-*.whl \
 && /opt/omics-watcher/bin/omics-watcher --version

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="omics-watcher" \
      org.opencontainers.image.description="Watches Tencent Cloud Omics runs and notifies chat, email and webhooks when their status changes." \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 omics-watcher \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/omics-watcher --shell /usr/sbin/nologin omics-watcher \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/omics-watcher
COPY --from=builder /opt/omics-watcher /opt/omics-watcher
# Bytecode was compiled at install time; never write .pyc at run time (read-only root).
ENV PATH=/opt/omics-watcher/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/omics-watcher \
    OMICS_WATCHER_LOGGING__FORMAT=json \
    OMICS_WATCHER_STATE__PATH=/var/lib/omics-watcher/omics-watcher.db \
    OMICS_WATCHER_SERVER__LISTEN=0.0.0.0:9477
WORKDIR /var/lib/omics-watcher
VOLUME ["/var/lib/omics-watcher"]
USER 10001:10001
EXPOSE 9477
STOPSIGNAL SIGTERM
# slim has no curl: ask /healthz with the standard library. urlopen raises (exit 1) on any
# non-2xx answer or connection error. Change the port here too if you change SERVER__LISTEN.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9477/healthz', timeout=4)"]
ENTRYPOINT ["omics-watcher"]
CMD ["run"]
