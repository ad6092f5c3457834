"""The genq HTTP API: validates jobs, stores them, enqueues them; never imports torch."""
