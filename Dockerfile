# SecondPass HTTP service (`secondpass serve`).
#   CPU (default):  docker build -t secondpass .
#   CUDA:           docker build -t secondpass:cuda --build-arg CUDA=cu124 .
# CUDA names a PyTorch wheel index (cu118, cu121, cu124, ...); the wheels bundle the CUDA
# runtime, so the base image stays slim and the host only needs the NVIDIA driver and
# container toolkit (`docker run --gpus all ...`).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG CUDA=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/models/hf

WORKDIR /app

# torch first, from the CPU or the CUDA index, so the project's install below reuses it.
RUN if [ -z "$CUDA" ]; then index=https://download.pytorch.org/whl/cpu; \
    else index="https://download.pytorch.org/whl/${CUDA}"; fi \
    && pip install --index-url "$index" torch

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[service,rerank,elasticsearch,opensearch,redis]"

RUN useradd --create-home --uid 10001 secondpass && mkdir -p /models && chown secondpass /models
USER secondpass

EXPOSE 8080
# Closed by default: the service listens on all interfaces here, so it refuses to start
# without client API keys. Pass them at run time, never in the image:
#   docker run -e SECONDPASS_SERVICE_API_KEYS="$KEY" ...              (comma-separated)
#   docker run -v ./keys:/run/secrets/keys:ro -e SECONDPASS_SERVICE_API_KEY_FILE=/run/secrets/keys ...
# Clients send `Authorization: Bearer KEY` (or `X-API-Key: KEY`); /livez and /readyz stay open
# for probes. SECONDPASS_SERVICE_ALLOW_UNAUTHENTICATED=true runs it open, on purpose only.
# SIGTERM drains: /readyz turns 503, in-flight requests finish, then the process exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/livez').status != 200)"
ENTRYPOINT ["secondpass", "serve", "--host", "0.0.0.0", "--port", "8080"]
