# Two targets: "app" (the demo under gunicorn, slim, non-root) and "bench" (the benchmarks).
#
#   docker build --target app -t fastapi-pubsub-cluster:app .
#   docker build --target bench -t fastapi-pubsub-cluster:bench .
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies alone, in their own layer: it is rebuilt when pyproject.toml changes,
# not when the source does. (requirements.py prints them from pyproject.toml.)
COPY pyproject.toml ./
COPY docker/requirements.py ./docker/requirements.py

FROM base AS app
RUN python docker/requirements.py demo > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md LICENSE ./
COPY fastapi_pubsub_cluster ./fastapi_pubsub_cluster
RUN pip install --no-deps . && rm -rf build
COPY examples/gunicorn.conf.py examples/publish_from_script.py ./examples/
RUN useradd --system --uid 10001 --no-create-home app
USER app
EXPOSE 8000
CMD ["gunicorn", "-c", "examples/gunicorn.conf.py", "fastapi_pubsub_cluster.demo.asgi:app"]

# The benchmarks: the [bench] extra and the peers they measure. Root, so that results can be
# written to a bind-mounted benchmarks/results owned by anyone.
FROM base AS bench
RUN python docker/requirements.py bench > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md LICENSE ./
COPY fastapi_pubsub_cluster ./fastapi_pubsub_cluster
RUN pip install --no-deps . && rm -rf build
COPY examples ./examples
COPY benchmarks ./benchmarks
COPY tools ./tools
# broadcaster and fastapi-websocket-pubsub each in a venv of its own (they would overwrite
# each other's files in one install), built now rather than at the first run.
RUN python -m benchmarks.peer_venvs
CMD ["python", "-m", "benchmarks"]
