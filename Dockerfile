# The image every node of the docker-compose stack runs: sweeplab with Ray, MLflow and PyTorch (CUDA build).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends git curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY conf ./conf
COPY sweeps ./sweeps
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" && pip install --no-cache-dir -e .
ENV SWEEPLAB_HOME=/app \
    PYTHONUNBUFFERED=1
CMD ["sweeplab", "--help"]
