"""What users touch: the Python client (`from genq import Client`), the `genq` command and its launcher."""

from genq.client import Client, GenqError

__all__ = ["Client", "GenqError"]
