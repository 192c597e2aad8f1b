# postdate's application image: the project installed once, at build time, and
# consumers/supervisord.conf run by consumers/supervisor.sh (two expire-reservation workers
# serving metrics and health on 9800 and 9801, and the outbox relay; the demo on request:
# `supervisorctl start demo`, or `python -m orders.demo` in the container).
# Configured at run time through the settings' environment variables: RABBITMQ_URL,
# POSTDATE_* (POSTDATE_SCHEDULE_URL, POSTDATE_BACKEND, ...), DATABASE_URL, ORDERS_*.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The packages (postdate, and the reference service's orders) go to site-packages;
# supervisord is installed alone (pytest, mypy, ... stay out of the image).
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
COPY reference ./reference
RUN pip install . ./reference "supervisor==4.3.0" \
    && rm -rf src reference build

# The worker entrypoints (`python -m consumers.expire_reservation`) and the supervisord
# config; supervisord runs its programs from /app.
COPY consumers ./consumers

RUN useradd --system --uid 10001 --no-create-home --home-dir /app postdate \
    && mkdir -p /run/postdate \
    && chown postdate /run/postdate
USER postdate

# supervisor.sh's two variables: the run directory (socket, pid file, one log per process)
# and the metrics port prefix (worker NN on port <prefix>NN).
ENV POSTDATE_RUN_DIR=/run/postdate \
    POSTDATE_METRICS_PORT_PREFIX=98
EXPOSE 9800 9801

# Ready when both workers answer /readyz (connected, consuming).
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=12 \
    CMD python -c 'import os, urllib.request as u; p = os.environ["POSTDATE_METRICS_PORT_PREFIX"]; [u.urlopen(f"http://127.0.0.1:{p}{n:02d}/readyz", timeout=3) for n in (0, 1)]'

CMD ["consumers/supervisor.sh"]
