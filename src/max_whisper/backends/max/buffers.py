"""Host <-> device for the MAX runtime: weights, inputs and results as MAX Buffers."""

from __future__ import annotations

import numpy as np
from max.driver import CPU, Buffer, Device


def to_numpy(buffer: Buffer) -> np.ndarray:
    """A result as a host array (on the host: the buffer's own memory)."""
    return buffer.to_numpy() if buffer.is_host else buffer.to(CPU()).to_numpy()


def kept_rows(array: np.ndarray, index: np.ndarray, in_place: bool) -> np.ndarray:
    """Rows `index` of `array` (its first axis). In place (index ascending), they move to the front
    of the array's own memory: no new pages to fault in (a new array of the cross K/V of 8 windows
    costs several times the copy itself)."""
    if not in_place or (np.diff(index) <= 0).any():
        return array[index]
    for new, old in enumerate(index):  # ascending: rows only move towards the front
        if new != old:
            array[new] = array[old]
    return array[: len(index)]


class DeviceBuffers:
    """Arrays onto one device, and the weight registries kept alive: MAX reads host arrays in
    place, so they must outlive the models."""

    def __init__(self, device: Device):
        self.device = device
        self._registries: list[dict[str, np.ndarray]] = []

    def weights(self, registry: dict[str, np.ndarray]) -> dict:
        """A weights registry for `session.init`: the host arrays, or their copies on the device."""
        self._registries.append(registry)
        if self.device.is_host:
            return registry
        return {name: Buffer.from_numpy(a).to(self.device) for name, a in registry.items()}

    def to_device(self, array: np.ndarray) -> Buffer:
        """`array` as an input buffer (`Buffer.to` copies only to another device)."""
        return Buffer.from_numpy(np.ascontiguousarray(array)).to(self.device)
