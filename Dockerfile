# syntax=docker/dockerfile:1
# batch-gateway: the core and every adapter, built into wheels, installed into a slim image
# that runs as a non-root user. See README "Operations" (Docker).
#
#   docker build -t batch-gateway .
#   docker run -p 4000:4000 -v $PWD/config.yaml:/etc/gateway/config.yaml:ro \
#     -e GATEWAY_MASTER_KEY=sk-... -e DATABASE_URL=postgresql://... batch-gateway

ARG PYTHON_VERSION=3.12

# -- build: wheels of the core and of every adapter ----------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "build==1.*"
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY adapters ./adapters
RUN python -m build --wheel --outdir /wheels . \
    && for adapter in adapters/*/; do python -m build --wheel --outdir /wheels "$adapter"; done

# -- runtime -------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim
# The wheels by file: the gateway's distributions never come from the package index.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/gateway gateway
USER 10001:10001
WORKDIR /var/lib/gateway
# SQLite and kept files default to the home directory; point DATABASE_URL at PostgreSQL and
# general_settings.file_storage at an object store to run several containers.
ENV PYTHONUNBUFFERED=1 \
    GATEWAY_DATA_DIR=/var/lib/gateway/data \
    DATABASE_URL=sqlite:////var/lib/gateway/gateway.db
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:4000/health/liveliness', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/config.yaml", "--host", "0.0.0.0", "--port", "4000", "--log-format", "json"]
