# Wharf broker image.
#
#   docker build -t wharf .
#   docker run -p 5680:5680 -p 8680:8680 -v wharf-data:/var/lib/wharf wharf
#
# Configuration is by WHARF_* environment variables (WHARF_LOG_FORMAT=json, ...) or a TOML
# file passed with WHARF_CONFIG / --config; see docs/operations.md.  The built-in guest user
# may only log in from loopback, so a container needs [[users]] from a config file.
#
# BASE is a build argument so the same file builds on hosts without access to Docker Hub
# (scripts/build_image.sh uses a Debian bookworm image made with debootstrap).  Both stages
# use it, so the venv's interpreter in the runtime stage is the one the wheels were built for.
ARG BASE=python:3.11-slim

# --- builder: the wharf wheel plus wheels of its dependencies ------------------------------
FROM ${BASE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY protocol ./protocol
COPY broker ./broker
COPY client ./client
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --wheel-dir /wheels .

# --- runtime: a venv with only the wheels, no build tools, no sources ----------------------
FROM ${BASE}
ARG WHARF_UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/wharf/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    WHARF_DATA_DIR=/var/lib/wharf
# Only the data directory is set here: WHARF_* variables override a --config file, so any
# other default baked in as ENV would silently win over the operator's TOML.  The broker's
# own defaults already listen on 0.0.0.0:5680 and :8680.
# COPY, not RUN --mount=from=builder: every builder keys COPY's cache on the wheels' content
# (buildah reuses a cached RUN --mount step even when the mounted wheels changed).
COPY --from=builder /wheels /tmp/wheels
RUN python3 -m venv /opt/wharf \
 && /opt/wharf/bin/pip install --no-index --find-links /tmp/wheels wharf \
 && rm -rf /tmp/wheels \
 && groupadd --system --gid "${WHARF_UID}" wharf \
 && useradd --system --uid "${WHARF_UID}" --gid wharf --home-dir /var/lib/wharf \
        --no-create-home --shell /usr/sbin/nologin wharf \
 && mkdir -p /var/lib/wharf /etc/wharf \
 && chown wharf:wharf /var/lib/wharf \
 && chmod 0750 /var/lib/wharf
USER wharf
WORKDIR /var/lib/wharf
VOLUME ["/var/lib/wharf"]
EXPOSE 5680 8680 5672
# No curl in slim images: probe /healthz with the venv's Python (follows WHARF_HTTP_PORT).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WHARF_HTTP_PORT', '8680'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["wharf"]
CMD ["serve"]
