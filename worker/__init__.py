"""The genq worker: loads one model on one device and runs generation jobs from its queue."""
