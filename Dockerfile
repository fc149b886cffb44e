# One image for the API and the workers.
#   CPU:  docker build -t lth .
#   CUDA: docker build -t lth-cuda --build-arg BASE_IMAGE=<a CUDA runtime image with Python 3.11> \
#           --build-arg TORCH_INDEX_URL=<the PyTorch wheel index for that CUDA version> .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LTH_HOME=/var/lib/lth

WORKDIR /app
# torch first, from the index that matches the base image, so the project install keeps it.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch torchvision; \
    else \
        pip install torch torchvision; \
    fi
COPY pyproject.toml README.md ./
COPY api_schemas ./api_schemas
COPY store ./store
COPY reports ./reports
COPY service ./service
COPY worker ./worker
COPY client ./client
RUN pip install . && useradd --create-home --uid 10001 lth \
    && mkdir -p /var/lib/lth && chown lth /var/lib/lth
USER lth
EXPOSE 8000
CMD ["lth", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000"]
