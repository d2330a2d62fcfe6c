"""The MAX Graph backend: encoder and decoder graphs, device choice, compiled-graph cache."""

from .backend import MaxBackend
from .device import select_device
from .encoder import MaxEncoder

__all__ = ["MaxBackend", "MaxEncoder", "select_device"]
