"""OpenAI-compatible API gateway for M5Stack StackFlow devices."""

__version__ = "0.1.0"
