# syntax=docker/dockerfile:1
#
# A millstream service in a container, running as a non-root user.
#
#   docker build -t millstream-orders --build-arg EXTRAS=redis,postgres .
#
# EXTRAS: the optional dependencies to install, comma-separated, from
# pyproject.toml: redis, rabbitmq, nats, kafka, postgres (empty: none, which
# leaves the embedded SQLite broker and store). Install the broker's extra,
# `postgres` for a PostgreSQL store and `redis` for cache invalidation across
# instances (MILLSTREAM_CACHE_URL=redis://...).
#
# By default the image runs the example order service (examples/orders).
# For your own service, replace the two lines marked "your service" below:
# copy your package instead of examples/, and set CMD to
# ["run", "your_package.module:app"] (HTTP and consumers, add "--workers", "N"
# for several processes) or ["worker", "your_package.module:ms"] (consumers
# only, with health and metrics on MILLSTREAM_PORT). docs/deploy.md has the rest.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ARG EXTRAS=redis,postgres
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY millstream/ millstream/
# Brackets with nothing in them ("EXTRAS=") install the package alone.
RUN /opt/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MILLSTREAM_HOST=0.0.0.0 \
    MILLSTREAM_PORT=8080
RUN groupadd --system --gid 10001 millstream \
    && useradd --system --uid 10001 --gid millstream --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin millstream
COPY --from=build /opt/venv /opt/venv
# `millstream run` imports module:app from the working directory.
WORKDIR /app
# your service: copy your package here instead of the examples.
COPY examples/ examples/
USER 10001:10001
EXPOSE 8080
# Python's standard library: the slim image has no curl. Exits non-zero when
# /health/live does not answer 200 within two seconds.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('MILLSTREAM_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["millstream"]
# your service: ["run", "your_package.module:app"] or ["worker", "your_package.module:ms"].
CMD ["run", "examples.orders:app"]
