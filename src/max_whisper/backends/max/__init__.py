"""The MAX Graph backend: encoder and decoder graphs, device choice, compiled-graph cache."""
from .backend import MaxBackend

__all__ = ["MaxBackend"]
