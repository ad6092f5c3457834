"""A nemesis soak of the whole stack (`make chaos`, `python -m chaos`): see docs/chaos.md."""
