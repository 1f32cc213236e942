"""GPU render nodes: which Cycles devices each worker slot renders on (``farm worker --gpu``;
this module runs in farm processes, gpu_probe.py inside Blender).

The devices come from the worker's own Blender (``gpu_probe.py``: every backend
it was built with and the GPUs each sees), their memory from ``nvidia-smi`` where there
is one (Blender does not say). :func:`plan` turns that list, given as data, into one
:class:`SlotDevices` per slot; the child of slot N gets its own as ``BUILDCAT_GPU`` in
its environment, and every render it runs applies it (``override.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from buildcat.blender import BlenderInstall, find_blender, render_devices
from buildcat.errors import FarmError

#: Backends by preference where several see the same GPUs: OptiX (NVIDIA RTX, with
#: hardware ray tracing) over CUDA, then AMD, Intel, Apple.
BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
#: The child's environment variable holding its slot's devices (JSON of SlotDevices).
ENVIRONMENT = "BUILDCAT_GPU"
#: Tests only: a device list (gpu_probe.py's JSON) used instead of asking Blender, for
#: machines that have no GPU. Renders then fail in Blender, which has no such device.
FAKE_DEVICES = "BUILDCAT_FAKE_GPU_DEVICES"
_BUS = re.compile(r"([0-9a-f]{2,4}:[0-9a-f]{2})(?:\.[0-9a-f])?$", re.IGNORECASE)


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    type: str
    #: GiB of device memory where it is known (NVIDIA, through nvidia-smi), else None.
    memory_gib: float | None = None

    def describe(self) -> str:
        memory = f", {self.memory_gib:.0f} GiB" if self.memory_gib is not None else ""
        return f"{self.name}{memory}"


@dataclass(frozen=True)
class SlotDevices:
    """What one slot renders on: ``devices`` of ``backend``, and the CPU too if ``cpu``."""

    backend: str
    devices: tuple[Device, ...]
    cpu: bool = False
    cpu_device: Device | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        ids = [d.id for d in self.devices]
        if self.cpu and self.cpu_device is not None:
            ids.append(self.cpu_device.id)
        return {
            "backend": self.backend,
            "devices": ids,
            "cpu": self.cpu,
            "label": self.describe(),
        }

    def describe(self) -> str:
        names = " + ".join(d.describe() for d in self.devices)
        return f"{self.backend} {names}" + (" + CPU" if self.cpu else "")


def parse_devices(found: dict[str, Any]) -> tuple[dict[str, list[Device]], Device, str]:
    """gpu_probe.py's JSON -> (GPUs per backend, the CPU device, Blender's version). A
    device's ``memory_gib`` is read where given (a test's fake list)."""
    backends = {
        str(backend): [
            Device(str(d["id"]), str(d["name"]), str(d["type"]), d.get("memory_gib"))
            for d in listed
        ]
        for backend, listed in dict(found.get("backends", {})).items()
    }
    cpu = dict(found.get("cpu") or {"id": "CPU", "name": "CPU", "type": "CPU"})
    return backends, Device(str(cpu["id"]), str(cpu["name"]), "CPU"), str(found.get("blender"))


def with_memory(
    backends: dict[str, list[Device]], memory: dict[str, float]
) -> dict[str, list[Device]]:
    """The devices with the memory ``nvidia-smi`` reported for their PCI bus ("01:00")."""
    result = {}
    for backend, devices in backends.items():
        result[backend] = [
            Device(d.id, d.name, d.type, memory.get(_bus_of(d.id) or "", d.memory_gib))
            for d in devices
        ]
    return result


def _bus_of(text: str) -> str | None:
    """A PCI bus as Blender's device id or nvidia-smi name it -> ``"01:00"``
    (``"CUDA_NVIDIA H100 80GB HBM3_0000:01:00_OptiX"``, ``"00000000:01:00.0"``)."""
    match = _BUS.search(text.removesuffix("_OptiX"))
    return match[1].lower()[-5:] if match else None


def parse_nvidia_smi(text: str) -> dict[str, float]:
    """``nvidia-smi --query-gpu=pci.bus_id,memory.total --format=csv,noheader,nounits``
    output -> GiB by bus ("01:00")."""
    memory = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 2 or not parts[1].replace(".", "", 1).isdigit():
            continue
        bus = _bus_of(parts[0])
        if bus:
            memory[bus] = float(parts[1]) / 1024  # MiB -> GiB
    return memory


def nvidia_memory() -> dict[str, float]:
    """This machine's NVIDIA GPUs' memory by bus; empty where there is no nvidia-smi."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return {}
    query = ["--query-gpu=pci.bus_id,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run([program, *query], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_nvidia_smi(done.stdout) if done.returncode == 0 else {}


def choose_backend(
    backends: dict[str, list[Device]], wanted: str | None, source: str = "Blender"
) -> str:
    """``wanted`` if it has GPUs here, else the first of :data:`BACKENDS` that has."""
    if wanted:
        name = wanted.upper()
        if name not in BACKENDS:
            raise FarmError(f"--gpu-backend {wanted}: use one of {', '.join(BACKENDS)}")
        if not backends.get(name):
            raise FarmError(f"--gpu-backend {name}: {source} found no {name} GPU "
                            f"({_found_text(backends)})")  # fmt: skip
        return name
    for name in BACKENDS:
        if backends.get(name):
            return name
    raise FarmError(f"--gpu: {source} found no GPU ({_found_text(backends)})")


def _found_text(backends: dict[str, list[Device]]) -> str:
    looked = ", ".join(name for name in BACKENDS if name in backends)
    seen = [f"{len(devices)} {name}" for name, devices in backends.items() if devices]
    if not looked:
        return "it was built with none of " + ", ".join(BACKENDS)
    return f"it looked for {looked} devices" + (f"; found {', '.join(seen)}" if seen else "")


def plan(
    backends: dict[str, list[Device]],
    cpu_device: Device,
    *,
    backend: str | None = None,
    indices: list[int] | None = None,
    slots: int | None = None,
    with_cpu: bool = False,
    source: str = "Blender",
) -> list[SlotDevices]:
    """One :class:`SlotDevices` per slot.

    The GPUs are those of the chosen backend (:func:`choose_backend`), or the ones
    ``indices`` names (0-based, in Blender's order). With no ``slots``, one slot per GPU;
    with fewer slots than GPUs, each slot takes every ``slots``-th GPU (4 GPUs, 2 slots:
    0+2 and 1+3); with more, slots share GPUs in turn."""
    chosen = choose_backend(backends, backend, source)
    gpus = backends[chosen]
    if indices is not None:
        if not indices:
            raise FarmError("--gpu-devices: name at least one device (0,1,...)")
        wrong = [i for i in indices if not 0 <= i < len(gpus)]
        if wrong:
            raise FarmError(
                f"--gpu-devices {','.join(map(str, indices))}: {chosen} has {len(gpus)} "
                f"device(s) here (0-{len(gpus) - 1}): {'; '.join(d.name for d in gpus)}"
            )
        if len(set(indices)) != len(indices):
            raise FarmError(f"--gpu-devices {','.join(map(str, indices))}: a device twice")
        gpus = [gpus[i] for i in indices]
    count = slots or len(gpus)
    if count <= len(gpus):
        shares = [tuple(gpus[i::count]) for i in range(count)]
    else:
        shares = [(gpus[i % len(gpus)],) for i in range(count)]
    return [SlotDevices(chosen, share, with_cpu, cpu_device) for share in shares]


def capabilities(slots: list[SlotDevices]) -> dict[str, str]:
    """What a GPU worker advertises: ``gpu`` (its backend), ``gpu.count`` (GPUs a slot
    renders on, the fewest), ``gpu.memory`` (GiB of a slot's smallest GPU, where known)."""
    first = slots[0]
    found = {
        "gpu": first.backend,
        "gpu.count": str(min(len(slot.devices) for slot in slots)),
    }
    memories = [d.memory_gib for slot in slots for d in slot.devices]
    if memories and all(m is not None for m in memories):
        found["gpu.memory"] = f"{min(m for m in memories if m is not None):.0f}"
    return found


def info(slots: list[SlotDevices]) -> list[dict[str, Any]]:
    """Each slot's devices, for ``farm workers`` and the dashboard."""
    return [
        {"slot": n, "backend": slot.backend, "cpu": slot.cpu,
         "devices": [{"id": d.id, "name": d.name, "memory_gib": d.memory_gib}
                     for d in slot.devices]}
        for n, slot in enumerate(slots)
    ]  # fmt: skip


def for_worker(
    blender: str | None,
    *,
    backend: str | None,
    indices: list[int] | None,
    slots: int | None,
    with_cpu: bool,
) -> tuple[BlenderInstall, list[SlotDevices]]:
    """``farm worker --gpu``: the worker's Blender and each slot's devices, or a FarmError
    of one line (no Blender, no GPU it can use, a device or backend this machine lacks)."""
    found_blender = find_blender(blender or None)
    if found_blender is None:
        raise FarmError("--gpu: no Blender found to render with (--blender PATH, $BLENDER)")
    listed = fake_devices() or render_devices(found_blender)
    backends, cpu_device, version = parse_devices(listed)
    backends = with_memory(backends, nvidia_memory())
    chosen = plan(backends, cpu_device, backend=backend, indices=indices, slots=slots,
                  with_cpu=with_cpu, source=f"Blender {version}")  # fmt: skip
    return found_blender, chosen


def fake_devices() -> dict[str, Any] | None:
    """:data:`FAKE_DEVICES`' list, where a test gives one."""
    text = os.environ.get(FAKE_DEVICES)
    return json.loads(text) if text else None


def slot_devices() -> dict[str, Any] | None:
    """Inside a task: the devices of the slot running it, or None on a worker without --gpu."""
    text = os.environ.get(ENVIRONMENT)
    return json.loads(text) if text else None


__all__ = [
    "BACKENDS", "Device", "SlotDevices", "capabilities", "choose_backend", "for_worker", "info",
    "nvidia_memory", "parse_devices", "parse_nvidia_smi", "plan", "slot_devices", "with_memory",
]  # fmt: skip
