"""Code used by both the API and the workers: settings, wire schemas, job store, Celery app."""
