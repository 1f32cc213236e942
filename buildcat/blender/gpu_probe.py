# mypy: ignore-errors
"""List the devices Cycles can render on, per backend (runs inside Blender).

Binary: ``blender -b --factory-startup --python-exit-code 1 --python gpu_probe.py``;
bpy module: ``python gpu_probe.py``. Prints one line::

    BUILDCAT-DEVICES {"blender": "4.5.1", "backends": {"CUDA": [{"id": ..., "name": ...,
    "type": "CUDA"}, ...], "OPTIX": [...]}, "cpu": {"id": "CPU", "name": ...}}

A backend is listed when this Blender was built with it (Debian's has CUDA and HIP, the
bpy module also OptiX and oneAPI; Metal on macOS), with the GPUs its driver shows (none
on a machine without such a GPU). The CPU device is given apart.
"""

from __future__ import annotations

import json

import bpy

PREFIX = "BUILDCAT-DEVICES "


def devices() -> dict:
    prefs = bpy.context.preferences.addons["cycles"].preferences
    backends: dict[str, list[dict]] = {}
    cpu = None
    for identifier, *_ in prefs.get_device_types(bpy.context):
        if identifier == "NONE":
            continue
        try:
            prefs.compute_device_type = identifier
        except TypeError:  # listed but not usable here
            continue
        prefs.refresh_devices()
        found = []
        for device in prefs.get_devices_for_type(identifier):
            entry = {"id": device.id, "name": device.name, "type": device.type}
            if device.type == "CPU":
                cpu = cpu or entry
            else:
                found.append(entry)
        backends[identifier] = found
    if cpu is None:
        prefs.compute_device_type = "NONE"
        prefs.refresh_devices()
        cpu = next(({"id": d.id, "name": d.name, "type": d.type} for d in prefs.devices
                    if d.type == "CPU"), {"id": "CPU", "name": "CPU", "type": "CPU"})  # fmt: skip
    return {"blender": bpy.app.version_string, "backends": backends, "cpu": cpu}


if __name__ == "__main__":
    print(PREFIX + json.dumps(devices()), flush=True)
