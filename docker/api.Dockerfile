# The genq HTTP API: Flask under gunicorn. It never imports torch or transformers, so the image
# carries only the API's dependencies (pinned as in requirements.txt) and the project itself.
#   docker build -f docker/api.Dockerfile -t genq-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Keep these pins equal to requirements.txt (tests/test_compose.py checks that they are).
RUN pip install \
      celery==5.7.0 \
      kombu==5.7.0 \
      redis==8.1.0 \
      flask==3.1.3 \
      pydantic==2.14.3 \
      pydantic-settings==2.16.3 \
      gunicorn==27.0.1 \
      gevent==26.9.0 \
      flask-limiter==4.1.1 \
      limits==5.8.0 \
      flask-swagger-ui==5.34.0 \
      prometheus-client==0.26.0 \
      rich==15.0.0 \
      llguidance==1.9.1 \
      jsonschema-rs==0.60.3

# --no-deps: the worker-only dependencies (torch, transformers, ...) stay out of this image.
COPY pyproject.toml README.md ./
COPY genq ./genq
COPY api ./api
COPY shared ./shared
COPY worker ./worker
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 genq
USER genq

# GENQ_HOST=0.0.0.0 so that the published port reaches gunicorn; everything else comes from GENQ_*.
ENV GENQ_HOST=0.0.0.0 \
    GENQ_PORT=8000
EXPOSE 8000
CMD ["genq", "api"]
