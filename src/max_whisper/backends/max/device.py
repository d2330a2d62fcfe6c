"""Pick the MAX device a backend runs on, and the one inference session both halves share."""

from __future__ import annotations

from dataclasses import dataclass

from max.driver import CPU, Accelerator, Device, accelerator_count, set_virtual_cpu_target
from max.engine import InferenceSession
from max.graph import DeviceRef

from ...cpu import cpu_target
from ...errors import MaxWhisperError, UsageError
from .. import DEVICES
from .custom_ops import kernel_library


class DeviceUnavailable(MaxWhisperError, RuntimeError):
    """The device asked for is not on this machine."""


def device_label(device: str = "auto") -> str:
    """The label, "cpu" or "gpu", that the device asked for ("auto", "cpu" or "gpu") comes to on
    this machine."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "gpu" and accelerator_count() == 0:
        raise DeviceUnavailable(
            "device 'gpu' was requested but MAX sees no accelerator; use --device cpu"
        )
    return "cpu" if device == "cpu" or accelerator_count() == 0 else "gpu"


def select_device(device: str = "auto") -> tuple[Device, DeviceRef, str]:
    """Return (driver device, graph DeviceRef, label "cpu" or "gpu") for "auto", "cpu" or "gpu"."""
    if device_label(device) == "cpu":
        return CPU(), DeviceRef.CPU(), "cpu"
    accelerator = Accelerator()
    return accelerator, DeviceRef.from_device(accelerator), "gpu"


@dataclass
class MaxRuntime:
    """One device choice and one InferenceSession, shared by a backend's encoder and decoder."""

    device: Device
    device_ref: DeviceRef
    label: str  # "cpu" or "gpu"
    session: InferenceSession

    @classmethod
    def create(cls, device: str = "auto") -> MaxRuntime:
        driver_device, device_ref, label = select_device(device)
        # the CPU kernels compiled from here on keep to $MAX_WHISPER_CPU_TARGET's level, if set
        set_virtual_cpu_target(cpu_target() or "")
        # our Mojo kernels (custom_ops) run on the CPU only; a GPU graph never calls them
        extensions = [kernel_library()] if label == "cpu" else []
        session = InferenceSession(devices=[driver_device], custom_extensions=extensions)
        return cls(driver_device, device_ref, label, session)
