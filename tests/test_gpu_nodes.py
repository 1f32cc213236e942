"""GPU render nodes (``farm worker --gpu``). No GPU exists here: the device-selection
logic is tested with device lists given as data; the script that applies a slot's
devices runs for real in Blender (the Debian binary and the bpy module) with this
machine's CPU-only list; the refusal of a machine without a GPU is a real worker; the
slots' devices and what the worker advertises are checked on a real worker given a
device list (``BUILDCAT_FAKE_GPU_DEVICES``) in place of the GPUs it cannot have."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from buildcat import launch
from buildcat.blender import BPY, SCRIPTS, BlenderInstall, find_blender, render_devices
from buildcat.blender import devices as gpu
from buildcat.errors import FarmError
from buildcat.server.scheduler import requirement_met
from tests.blender_support import needs_binary
from tests.conftest import Farm


def nvidia(count: int, backend: str) -> list[gpu.Device]:
    suffix = "_OptiX" if backend == "OPTIX" else ""
    ids = [f"CUDA_NVIDIA RTX A6000_0000:{n + 1:02x}:00{suffix}" for n in range(count)]
    return [gpu.Device(id_, f"RTX A6000 #{n}", backend) for n, id_ in enumerate(ids)]


CPU = gpu.Device("CPU", "AMD EPYC", "CPU")


# ---- choosing devices, from lists given as data -----------------------------------------------


def test_optix_is_chosen_over_cuda_and_each_slot_gets_its_own_gpu() -> None:
    backends = {"CUDA": nvidia(2, "CUDA"), "OPTIX": nvidia(2, "OPTIX"), "HIP": []}
    slots = gpu.plan(backends, CPU)
    assert [slot.backend for slot in slots] == ["OPTIX", "OPTIX"]
    assert [[d.id for d in slot.devices] for slot in slots] == [
        ["CUDA_NVIDIA RTX A6000_0000:01:00_OptiX"], ["CUDA_NVIDIA RTX A6000_0000:02:00_OptiX"],
    ]  # fmt: skip
    assert all(not slot.cpu for slot in slots)
    chosen = gpu.plan(backends, CPU, backend="cuda")
    assert {slot.backend for slot in chosen} == {"CUDA"}


def test_devices_and_slots_chosen_by_hand() -> None:
    backends = {"CUDA": nvidia(4, "CUDA")}
    picked = gpu.plan(backends, CPU, indices=[0, 2])
    assert [[d.name for d in s.devices] for s in picked] == [["RTX A6000 #0"], ["RTX A6000 #2"]]
    paired = gpu.plan(backends, CPU, slots=2)  # fewer slots than GPUs: each takes several
    assert [[d.name[-1] for d in s.devices] for s in paired] == [["0", "2"], ["1", "3"]]
    shared = gpu.plan({"CUDA": nvidia(2, "CUDA")}, CPU, slots=3)  # more: they take turns
    assert [[d.name[-1] for d in s.devices] for s in shared] == [["0"], ["1"], ["0"]]
    with_cpu = gpu.plan(backends, CPU, indices=[1], with_cpu=True)
    assert with_cpu[0].to_json()["devices"] == ["CUDA_NVIDIA RTX A6000_0000:02:00", "CPU"]
    assert with_cpu[0].to_json()["cpu"] is True
    assert with_cpu[0].describe() == "CUDA RTX A6000 #1 + CPU"


def test_what_cannot_be_chosen_is_refused_in_one_line() -> None:
    two = {"CUDA": nvidia(2, "CUDA")}
    cases = [
        ({"CUDA": [], "HIP": []}, {}, "--gpu: Blender found no GPU (it looked for CUDA, HIP"),
        (two, {"backend": "HIP"}, "--gpu-backend HIP: Blender found no HIP GPU"),
        (two, {"backend": "vulkan"}, "use one of OPTIX, CUDA, HIP"),
        (two, {"indices": [0, 5]}, "CUDA has 2 device(s) here (0-1)"),
        (two, {"indices": [1, 1]}, "a device twice"),
        ({}, {}, "it was built with none of OPTIX, CUDA, HIP, ONEAPI, METAL"),
    ]
    for backends, options, message in cases:
        with pytest.raises(FarmError) as refused:
            gpu.plan(backends, CPU, **options)
        assert message in str(refused.value) and "\n" not in str(refused.value)


def test_memory_from_nvidia_smi_is_advertised_and_matched_by_requirements() -> None:
    smi = "00000000:01:00.0, 49140\n00000000:02:00.0, 24564\nnot a line\n"
    memory = gpu.parse_nvidia_smi(smi)
    assert memory == {"01:00": 49140 / 1024, "02:00": 24564 / 1024}
    backends = gpu.with_memory({"OPTIX": nvidia(2, "OPTIX")}, memory)
    slots = gpu.plan(backends, CPU)
    capabilities = gpu.capabilities(slots)
    assert capabilities == {"gpu": "OPTIX", "gpu.count": "1", "gpu.memory": "24"}
    assert requirement_met("gpu", capabilities)
    assert requirement_met("gpu.memory>=16G", capabilities)
    assert not requirement_met("gpu.memory>=32G", capabilities)
    # Memory nobody reported (AMD, Intel, Apple) is not guessed: no gpu.memory at all.
    unknown = gpu.capabilities(gpu.plan({"HIP": [gpu.Device("HIP_1", "RX 7900", "HIP")]}, CPU))
    assert "gpu.memory" not in unknown and not requirement_met("gpu.memory>=1", unknown)


# ---- inside Blender -------------------------------------------------------------------------


def blenders() -> list[BlenderInstall]:
    """The bpy module, and Debian's binary where it is installed."""
    found = [find_blender(BPY), find_blender("blender") if shutil.which("blender") else None]
    return [blender for blender in found if blender is not None]


def test_blender_lists_its_backends_and_this_machines_cpu() -> None:
    installs = blenders()
    assert installs, "no Blender here"
    for blender in installs:
        backends, cpu, version = gpu.parse_devices(render_devices(blender))
        assert version.split()[0] == blender.version.split()[0]
        assert "CUDA" in backends and set(backends) <= set(gpu.BACKENDS)
        assert cpu.type == "CPU" and cpu.id == "CPU"
        assert all(not devices for devices in backends.values())  # no GPU on this machine


def render_with(
    blender: BlenderInstall, scene: Path, out: Path, settings: dict[str, object]
) -> subprocess.CompletedProcess[str]:
    """One 16x16 frame of ``scene`` through bpy_render.py (the bpy module or the binary)."""
    request = json.dumps(
        {"blend": str(scene), "frames": [1], "output": str(out / "f_####"),
         "settings": {"resolution": [16, 16], "samples": 1, **settings}}
    )  # fmt: skip
    script = str(SCRIPTS / "bpy_render.py")
    if blender.kind == BPY:
        command = [blender.path, script, request]
    else:
        binary = [blender.path, "-b", "--python-exit-code", "1", "--python", script]
        command = [*binary, "--", request]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_a_slots_cpu_only_device_list_is_applied_in_blender(
    scene_file: Path, tmp_path: Path
) -> None:
    installs = blenders()
    assert len(installs) == 2 or not shutil.which("blender")
    for n, blender in enumerate(installs):
        out = tmp_path / f"out{n}"
        _backends, cpu, _version = gpu.parse_devices(render_devices(blender))
        slot = gpu.SlotDevices("NONE", (), cpu=True, cpu_device=cpu).to_json()
        done = render_with(blender, scene_file, out, {"gpu": slot})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert f"buildcat: devices NONE: {cpu.name} (Cycles on the CPU)" in done.stdout
        with Image.open(out / "f_0001.png") as image:
            assert image.size == (16, 16)
        # A device this machine lacks is refused before anything renders.
        fake = {"backend": "CUDA", "devices": ["CUDA_NVIDIA RTX A6000_0000:01:00"], "cpu": False}
        missing = render_with(blender, scene_file, tmp_path / f"missing{n}", {"gpu": fake})
        assert missing.returncode != 0
        said = missing.stdout + missing.stderr
        assert "CUDA device(s) CUDA_NVIDIA RTX A6000_0000:01:00 not found" in said
        assert not (tmp_path / f"missing{n}" / "f_0001.png").exists()


@needs_binary
def test_a_scene_using_osl_falls_back_to_the_cpu_with_a_line(
    scene_file: Path, tmp_path: Path
) -> None:
    osl = tmp_path / "osl.blend"
    subprocess.run(
        ["blender", "-b", str(scene_file), "--python-expr",
         f"import bpy; bpy.context.scene.cycles.shading_system = True; "
         f"bpy.ops.wm.save_as_mainfile(filepath={str(osl)!r})"],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    blender = find_blender("blender")
    assert blender is not None
    fake = {"backend": "CUDA", "devices": ["CUDA_NVIDIA RTX A6000_0000:01:00"], "cpu": False}
    done = render_with(blender, osl, tmp_path / "out", {"gpu": fake})
    assert done.returncode == 0, done.stdout[-2000:]
    assert "uses Open Shading Language, which CUDA cannot run: rendering on the CPU" in done.stdout
    assert (tmp_path / "out" / "f_0001.png").is_file()


# ---- the worker ------------------------------------------------------------------------------


def test_a_worker_without_a_gpu_refuses_to_start_in_one_line(farm: Farm) -> None:
    done = subprocess.run(
        launch.farm_command("worker", "--gpu", "--host", "127.0.0.1", "--port", str(farm.port),
                            "--root", str(farm.root), "--name", "no-gpu"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "found no GPU (it looked for" in done.stderr
    assert "CUDA" in done.stderr
    assert farm.client().workers() == []


GPU_JOBS = '''
import json, os, time
import buildcat

def on_slot(name):
    """Marks gates/NAME.started, waits for gates/NAME.go; returns the slot's devices."""
    gates = buildcat.path("gates")
    gates.mkdir(exist_ok=True)
    (gates / f"{name}.started").write_text("")
    while not (gates / f"{name}.go").exists():
        time.sleep(0.02)
    return json.loads(os.environ["BUILDCAT_GPU"])
'''


def test_each_slot_of_a_gpu_worker_gets_its_own_device_and_the_farm_sees_them(
    farm: Farm,
) -> None:
    listed = {
        "blender": "4.5.1",
        "cpu": {"id": "CPU", "name": "AMD EPYC", "type": "CPU"},
        "backends": {
            "CUDA": [{"id": f"CUDA_A6000_0000:0{n}:00", "name": f"RTX A6000 #{n}",
                      "type": "CUDA", "memory_gib": 48.0} for n in (1, 2)],
            "HIP": [],
        },
    }  # fmt: skip
    (farm.root / "gpujobs.py").write_text(GPU_JOBS)
    os.environ[gpu.FAKE_DEVICES] = json.dumps(listed)
    try:
        farm.start_worker("--gpu", name="gpu-node")  # no --slots: one per GPU
    finally:
        del os.environ[gpu.FAKE_DEVICES]
    farm.wait_workers(1, timeout=120)
    (worker,) = farm.client().workers()
    assert worker["slots"] == 2
    assert worker["capabilities"]["gpu"] == "CUDA"
    assert worker["capabilities"]["gpu.memory"] == "48"
    assert [slot["devices"][0]["name"] for slot in worker["info"]["gpus"]] == [
        "RTX A6000 #1", "RTX A6000 #2"]  # fmt: skip
    listing = farm.cli("workers")
    assert "CUDA 2x 48G" in listing.stdout, listing.stdout
    # Two tasks held open at once run on the two slots: each saw its own device.
    job = farm.client().map("gpujobs:on_slot", ["a", "b"], requires=["gpu.memory>=16G"])
    for name in ("a", "b"):
        farm.gate(name).wait_started(timeout=120)
    for name in ("a", "b"):
        farm.gate(name).open()
    job.wait(timeout=120)
    seen = job.results()
    assert sorted(r["devices"][0] for r in seen) == [
        "CUDA_A6000_0000:01:00",
        "CUDA_A6000_0000:02:00",
    ]
    assert {r["label"] for r in seen} == {"CUDA RTX A6000 #1, 48 GiB", "CUDA RTX A6000 #2, 48 GiB"}
    log = farm.log_text("gpu-node")
    assert "slot 0 renders on CUDA RTX A6000 #1, 48 GiB" in log
    assert "slot 1 renders on CUDA RTX A6000 #2, 48 GiB" in log
