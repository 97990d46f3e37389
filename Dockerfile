# The image every node of the docker-compose stack runs: sweeplab with Ray, MLflow and PyTorch (CUDA build).
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends git curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# The dependencies first, pinned to the versions CI passed with (constraints.txt), in a layer that an edit of the
# code or configs does not rebuild; then sweeplab itself.
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt -c constraints.txt
COPY src ./src
COPY conf ./conf
COPY sweeps ./sweeps
RUN pip install --no-cache-dir --no-deps -e .
ENV SWEEPLAB_HOME=/app \
    PYTHONUNBUFFERED=1
CMD ["sweeplab", "--help"]
