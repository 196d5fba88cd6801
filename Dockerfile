# One image for the demo app and the benchmarks (compose.yaml runs both).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml README.md ./
COPY fastapi_pubsub_cluster ./fastapi_pubsub_cluster
RUN pip install ".[demo,bench]"

COPY examples ./examples
COPY benchmarks ./benchmarks
COPY tools ./tools

EXPOSE 8000
CMD ["uvicorn", "examples.connected_clients:app", "--host", "0.0.0.0", "--port", "8000"]
