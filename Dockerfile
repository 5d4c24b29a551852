# syntax=docker/dockerfile:1
#
# omics-watcher container image.
#
#   docker build -t omics-watcher:0.1.0 .
#   docker run -d --name omics-watcher -p 127.0.0.1:9477:9477 \
#     -v omics-watcher-state:/var/lib/omics-watcher \
#     -e TENCENTCLOUD_SECRET_ID -e TENCENTCLOUD_SECRET_KEY \
#     --read-only --tmpfs /tmp omics-watcher:0.1.0
#
# Two stages: the builder installs the locked dependencies (requirements.lock, with hashes)
# into a virtual environment, then a wheel of this repository without resolving anything
# again (--no-deps); the runtime stage copies only that environment.
# The runtime runs as uid/gid 10001, writes nothing outside /var/lib/omics-watcher (a volume,
# the SQLite state) and /tmp, so it works with a read-only root filesystem.

# The base image is pinned by digest (the multi-platform index of python:3.11-slim-bookworm,
# Python 3.11.16, as recorded by docker-library/repo-info): a rebuild gets the same bytes.
# To move to a newer base: `docker buildx imagetools inspect python:3.11-slim-bookworm`
# and paste the "Digest:" line here.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/omics-watcher
# Dependencies first, exactly as locked (every version pinned, every file checked against its
# sha256; see requirements.lock), so that editing the source reuses this layer.
COPY requirements.lock ./
RUN /opt/omics-watcher/bin/pip install --require-hashes --only-binary :all: \
      --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY watcher ./watcher
# The base image's own setuptools builds the wheel (no download: pinned by the digest above).
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
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
    OMICS_WATCHER_SERVER__LISTEN=0.0.0.0:9477
# The default state path (omics-watcher.db, relative to the working directory) lands in the
# volume. Not set through OMICS_WATCHER_STATE__PATH: a config with [state] url (PostgreSQL)
# could not run in the image then, since path and url are exclusive.
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
