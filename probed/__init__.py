"""probed: an asyncio network probe daemon exporting Prometheus metrics."""

__version__ = "0.1.0"
