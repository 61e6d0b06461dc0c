# One image for the whole system; its command picks the role:
#   python run_study.py --data-dir /data ...   the study (trains into /app/results)
#   python -m service api                      the HTTP API (port $PORT, default 8000; the default CMD)
#   python -m service worker                   a Celery worker
#   python -m service migrate                  database migrations (alembic upgrade head)
# Build: docker build -t pneumoscope .   (see docs/containers.md and docker-compose.yml)
ARG BASE_IMAGE=python:3.11-slim

# ---- builder: the pinned requirements in a virtualenv ----------------------------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Tools only the test suite and linters use stay out of the image (one requirements.txt, filtered).
ARG DEV_ONLY="pytest pytest-timeout hypothesis iniconfig pluggy ruff playwright"
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && grep -viE "^($(echo $DEV_ONLY | tr ' ' '|'))==" /tmp/requirements.txt > /tmp/runtime.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r /tmp/runtime.txt \
 && rm -rf /tmp/requirements.txt /tmp/runtime.txt /root/.cache

# ---- runtime ---------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG APP_UID=10001
# The non-root user and the places it writes: /app/results (the study writes, the service reads the
# winner), /var/lib/pneumoscope (the service: uploads, and SQLite in the all-in-one mode) and
# /var/cache/pneumoscope (the study's preprocessing cache and weights). Named volumes mounted
# there start with this ownership.
RUN useradd --uid "$APP_UID" --user-group --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /app/results /var/lib/pneumoscope/uploads /var/cache/pneumoscope \
 && chown app:app /app/results /var/lib/pneumoscope /var/lib/pneumoscope/uploads /var/cache/pneumoscope
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/var/lib/pneumoscope \
    STORAGE_DIR=/var/lib/pneumoscope/uploads \
    PNEUMOSCOPE_DATA_DIR=/data \
    PNEUMOSCOPE_CACHE_DIR=/var/cache/pneumoscope/cache \
    PNEUMOSCOPE_WEIGHTS_DIR=/var/cache/pneumoscope/weights
WORKDIR /app
USER app
EXPOSE 8000
# Only the API serves HTTP: for any other role (worker, study, migrate) the check passes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD \
  python -c "import os, urllib.request as u; argv = open('/proc/1/cmdline', 'rb').read().split(b'\0'); b'api' in argv and u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"
CMD ["python", "-m", "service", "api"]
# The two big copies come last: with the legacy builder every instruction after them would copy
# the whole file system again on storage drivers without layering (vfs).
COPY --from=builder /opt/venv /opt/venv
COPY . /app
