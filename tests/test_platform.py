"""The platform layer (buildcat.platform): one implementation per system, chosen in one place.

Only Linux runs here. What can run on Linux runs for real (the macOS parent-death watch
and watchdog are plain POSIX: a process whose parent dies notices, a program whose
starter dies is killed). What only Windows has (kernel32, console events) is checked as
data: the job object's arguments through a fake kernel32, the options programs start with.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from buildcat import blender
from buildcat.platform import darwin, posix, watch, windows
from buildcat.worker.processes import alive
from tests.conftest import wait_for

PYTHON = sys.executable


def python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, **kwargs
    )


# ---- the choice, made once ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "module"),
    [
        ("win32", "buildcat.platform.windows"),
        ("darwin", "buildcat.platform.darwin"),
        ("linux", "buildcat.platform.posix"),
        ("freebsd14", "buildcat.platform.posix"),
    ],
)
def test_each_system_gets_its_own_implementation(system: str, module: str) -> None:
    # In a process of its own: the reload rebinds buildcat.platform for everyone there.
    process = python(f"""
        import importlib, sys
        import buildcat.platform as chosen
        import buildcat.platform.windows  # imported here, as it is by the tests: any system
        sys.platform = {system!r}
        importlib.reload(chosen)
        print(chosen.lock_byte.__module__, chosen.tied_to_me.__module__, chosen.NAME)
    """)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    lock_module, tie_module, name = out.split()
    assert tie_module == module
    # macOS reuses the POSIX lock; each system says who it is.
    assert lock_module == (
        "buildcat.platform.windows" if system == "win32" else "buildcat.platform.posix"
    )
    assert name == {"win32": "windows", "darwin": "darwin"}.get(system, "linux")


def test_every_system_offers_the_same_functions() -> None:
    # What the rest of buildcat calls must exist everywhere, with the same parameters.
    assert posix.__all__ == darwin.__all__ == windows.__all__
    for name in posix.__all__:
        ours = [getattr(module, name) for module in (posix, darwin, windows)]
        if callable(ours[0]):
            signatures = {str(inspect.signature(function)) for function in ours}
            assert len(signatures) == 1, f"{name}: {signatures}"


def test_linux_is_this_machine() -> None:
    import buildcat.platform as chosen

    assert chosen.NAME == "linux"
    assert chosen.tied_to_me is posix.tied_to_me
    assert chosen.CANCEL_SIGNAL == signal.SIGUSR1
    assert set(chosen.STOP_SIGNALS) == {signal.SIGTERM, signal.SIGINT}


# ---- Windows, as data ---------------------------------------------------------------------------


class FakeKernel32:
    """Records what the job-object code asks of kernel32; fails where told to."""

    CURRENT_PROCESS = -1  # GetCurrentProcess's pseudo-handle

    def __init__(self, failing: str = "") -> None:
        self.failing = failing
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.limit_flags: int | None = None

    def _call(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        return 0 if name == self.failing else 1

    def CreateJobObjectW(self, attributes: Any, name: Any) -> int:
        self.calls.append(("CreateJobObjectW", (attributes, name)))
        return 0 if self.failing == "CreateJobObjectW" else 0x1234

    def SetInformationJobObject(self, job: int, kind: int, info: Any, size: int) -> int:
        self.limit_flags = info.contents.BasicLimitInformation.LimitFlags
        return int(self._call("SetInformationJobObject", job, kind, size))

    def AssignProcessToJobObject(self, job: int, process: int) -> int:
        return int(self._call("AssignProcessToJobObject", job, process))

    def GetCurrentProcess(self) -> int:
        return self.CURRENT_PROCESS

    def CloseHandle(self, handle: int) -> int:
        return int(self._call("CloseHandle", handle))


def test_the_windows_job_object_kills_everything_when_the_worker_goes() -> None:
    kernel32 = FakeKernel32()
    job = windows.join_kill_on_close_job(kernel32)
    assert job == 0x1234
    limits = windows.JOBOBJECT_EXTENDED_LIMIT_INFORMATION
    assert kernel32.calls == [
        ("CreateJobObjectW", (None, None)),
        # JobObjectExtendedLimitInformation, the structure's size as Windows declares it
        ("SetInformationJobObject", (0x1234, 9, ctypes.sizeof(limits))),
        ("AssignProcessToJobObject", (0x1234, FakeKernel32.CURRENT_PROCESS)),
    ]
    assert kernel32.limit_flags == 0x2000  # JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(limits) == 144  # sizeof(JOBOBJECT_EXTENDED_LIMIT_INFORMATION), x64


@pytest.mark.parametrize("failing", ["SetInformationJobObject", "AssignProcessToJobObject"])
def test_a_job_object_that_cannot_be_joined_is_closed_with_a_warning(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    kernel32 = FakeKernel32(failing)
    assert windows.join_kill_on_close_job(kernel32) is None
    assert kernel32.calls[-1] == ("CloseHandle", (0x1234,))
    assert "may outlive it" in caplog.text


def test_no_job_object_no_handle_to_close(caplog: pytest.LogCaptureFixture) -> None:
    kernel32 = FakeKernel32("CreateJobObjectW")
    assert windows.join_kill_on_close_job(kernel32) is None
    assert [name for name, _ in kernel32.calls] == ["CreateJobObjectW"]
    assert "cannot create a job object" in caplog.text


def test_windows_programs_start_in_a_console_group_of_their_own() -> None:
    # Popen on Windows refuses preexec_fn and ignores start_new_session.
    assert windows.new_group() == {"creationflags": 0x200}  # CREATE_NEW_PROCESS_GROUP
    assert windows.tied_to_me(before_exec=lambda: None) == {"creationflags": 0x200}
    assert windows.kill_tree_command(4242) == ["taskkill", "/F", "/T", "/PID", "4242"]
    # Ctrl-C and Ctrl-Break stop the worker and the server; Ctrl-Break cancels a task.
    assert set(windows.STOP_SIGNALS) == {signal.SIGINT, 21}  # SIGBREAK
    assert windows.CANCEL_SIGNAL == 21
    assert windows.OPEN_FLAGS == 0x8000  # O_BINARY: a journal is bytes, not text


def test_windows_stop_handler_hands_ctrl_c_to_the_event_loop() -> None:
    # The Proactor loop has no add_signal_handler: signal.signal, then call_soon_threadsafe.
    # SIGINT is the same signal everywhere; 21 (SIGBREAK there) is SIGTTIN here.
    before = signal.getsignal(signal.SIGINT)

    async def main() -> int:
        stopped = asyncio.Event()
        undo = windows.on_stop_signals(asyncio.get_running_loop(), lambda _signum: stopped.set())
        try:
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stopped.wait(), 30)
            return 1
        finally:
            undo()

    assert asyncio.run(main()) == 1
    assert signal.getsignal(signal.SIGINT) is before


class FakePopen:
    pid = 4242

    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


def test_windows_interrupts_with_ctrl_break_and_stops_with_terminate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(windows.os, "kill", lambda pid, what: sent.append((pid, what)))
    program = FakePopen()
    windows.send_signal(program, signal.SIGINT)
    assert sent == [(4242, 1)] and not program.terminated  # CTRL_BREAK_EVENT
    windows.send_signal(program, signal.SIGTERM)
    assert program.terminated
    windows.send_cancel(77)
    assert sent[-1] == (77, 1)


def test_windows_positioned_reads_and_writes(tmp_path: Path) -> None:
    # Windows has no os.pread/os.pwrite: a seek and a read or write, one at a time.
    descriptor = os.open(tmp_path / "record", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert windows.pwrite(descriptor, b"beat 1", 0) == 6
        assert windows.pwrite(descriptor, b"far", 100) == 3
        assert windows.pread(descriptor, 6, 0) == b"beat 1"
        assert windows.pread(descriptor, 3, 100) == b"far"
        assert windows.pread(descriptor, 10, 200) == b""
    finally:
        os.close(descriptor)


# ---- macOS's parent-death watch and watchdog, run for real --------------------------------------


def test_a_process_whose_parent_dies_notices(tmp_path: Path) -> None:
    noticed = tmp_path / "noticed"
    child_code = tmp_path / "child.py"
    child_code.write_text(
        textwrap.dedent(f"""
            import os, time
            from buildcat.platform import watch
            def gone():
                open({str(noticed)!r}, "w").write("gone")
                os._exit(0)
            watch.watch_parent(os.getppid(), gone, poll=0.05)
            print("watching", flush=True)
            time.sleep(600)
        """)
    )
    parent = python(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, {str(child_code)!r}], stdout=subprocess.PIPE)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child) and not noticed.exists()
    parent.kill()
    parent.wait()
    parent.stdout.close()
    wait_for(noticed.exists, timeout=30)  # the child noticed its parent died
    wait_for(lambda: not alive(child), timeout=30)


def test_the_watchdog_kills_a_program_whose_starter_is_killed() -> None:
    launcher = python("""
        import subprocess, time
        from buildcat.platform import darwin
        program = subprocess.Popen(["sleep", "600"], **darwin.tied_to_me())
        darwin.after_start(program.pid)
        print(program.pid, flush=True)
        time.sleep(600)
    """)
    assert launcher.stdout is not None
    program = int(launcher.stdout.readline())
    assert os.getpgid(program) == program  # a process group of its own, as on Linux
    launcher.kill()  # -9: nothing of the launcher's own runs
    launcher.wait()
    launcher.stdout.close()
    wait_for(lambda: not alive(program), timeout=30)


def test_the_watchdog_leaves_when_the_program_ends_by_itself() -> None:
    program = subprocess.Popen(["sh", "-c", "exit 0"], **darwin.tied_to_me())
    watchdog = darwin.start_watchdog(program.pid)
    program.wait()
    assert watchdog.wait(timeout=60) == 0  # 0: it ended by itself; 1: the watchdog killed it


def test_the_watchdog_kills_at_once_when_the_starter_is_already_gone() -> None:
    program = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        # The starter named is not our parent: as if it died before the watchdog started.
        assert watch.guard(program.pid, parent=os.getppid() + 10_000_000, poll=0.05) == 1
        assert program.wait(timeout=30) == -signal.SIGKILL
    finally:
        program.kill()


def test_macos_ties_programs_with_the_watchdog_not_pdeathsig() -> None:
    assert darwin.tied_to_me() == {"start_new_session": True}  # no preexec_fn: no prctl there
    assert posix.tied_to_me()["start_new_session"] is True
    assert callable(posix.tied_to_me()["preexec_fn"])  # Linux: PR_SET_PDEATHSIG
    assert darwin.become_subreaper() is False


# ---- where Blender is found ---------------------------------------------------------------------


def fake_blender(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho 'Blender {version}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_windows_blender_newest_in_program_files_then_steam(tmp_path: Path) -> None:
    program_files, x86 = tmp_path / "Program Files", tmp_path / "Program Files (x86)"
    foundation = program_files / "Blender Foundation"
    for version in ("3.6", "4.5", "4.10"):
        fake_blender(foundation / f"Blender {version}" / "blender.exe", version)
    steam = fake_blender(x86 / "Steam/steamapps/common/Blender/blender.exe", "4.2")
    env = {"ProgramFiles": str(program_files), "ProgramFiles(x86)": str(x86)}
    locations = blender.install_locations("win32", env, tmp_path / "home")
    assert locations[:4] == [
        foundation / "Blender 4.10" / "blender.exe",  # 4.10 is newer than 4.5
        foundation / "Blender 4.5" / "blender.exe",
        foundation / "Blender 3.6" / "blender.exe",
        steam,
    ]
    assert blender.installed_blender(locations) == foundation / "Blender 4.10" / "blender.exe"
    # An uninstall that left its folder behind is passed over.
    (foundation / "Blender 4.10" / "blender.exe").unlink()
    locations = blender.install_locations("win32", env, tmp_path / "home")
    assert blender.installed_blender(locations) == foundation / "Blender 4.5" / "blender.exe"
    # Only Steam's.
    env = {"ProgramFiles": str(tmp_path / "empty"), "ProgramFiles(x86)": str(x86)}
    assert blender.installed_blender(blender.install_locations("win32", env)) == steam


def test_macos_blender_in_applications_then_the_users_then_steam(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    binary = Path("Contents/MacOS/Blender")
    versioned = fake_blender(root / "Applications/Blender 4.2.app" / binary, "4.2")
    users = fake_blender(home / "Applications/Blender.app" / binary, "4.5")
    steam = fake_blender(
        home / "Library/Application Support/Steam/steamapps/common/Blender/Blender.app" / binary,
        "4.1",
    )
    locations = blender.install_locations("darwin", {}, home, root=root)
    assert locations == [
        root / "Applications/Blender.app" / binary,
        versioned,
        users,
        steam,
    ]
    assert blender.installed_blender(locations) == versioned
    plain = fake_blender(root / "Applications/Blender.app" / binary, "4.5")
    assert blender.installed_blender(locations) == plain


def test_the_choice_of_places_follows_sys_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program_files = tmp_path / "Program Files"
    monkeypatch.setenv("ProgramFiles", str(program_files))
    fake_blender(program_files / "Blender Foundation/Blender 4.5/blender.exe", "4.5")
    monkeypatch.setattr(sys, "platform", "win32")
    windows_places = blender.install_locations(home=tmp_path)
    monkeypatch.setattr(sys, "platform", "darwin")
    mac_places = blender.install_locations(home=tmp_path)
    monkeypatch.undo()
    assert windows_places[0] == program_files / "Blender Foundation/Blender 4.5/blender.exe"
    assert all(path.name == "Blender" for path in mac_places)
    assert Path("/snap/bin/blender") in blender.install_locations(home=tmp_path)  # Linux


def test_blender_is_found_after_blender_then_path_then_where_it_installs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    system_places = blender.install_locations(home=home)[:2]  # the snap, the system flatpak
    assert not any(path.exists() for path in system_places), "this machine has a snap Blender"
    on_path = tmp_path / "bin"
    on_path.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.delenv("BLENDER", raising=False)
    assert blender.find_blender(allow_bpy=False) is None

    flatpak = fake_blender(home / ".local/share/flatpak/exports/bin/org.blender.Blender", "9.1")
    found = blender.find_blender(allow_bpy=False)
    assert found is not None and (found.path, found.version) == (str(flatpak), "9.1")

    fake_blender(on_path / "blender", "8.0")
    found = blender.find_blender(allow_bpy=False)
    assert found is not None and found.version == "8.0"  # PATH before the install places

    chosen = fake_blender(tmp_path / "mine" / "blender", "7.0")
    monkeypatch.setenv("BLENDER", str(chosen))
    found = blender.find_blender(allow_bpy=False)
    assert found is not None and found.version == "7.0"  # $BLENDER before PATH
    found = blender.find_blender(str(flatpak), allow_bpy=False)
    assert found is not None and found.version == "9.1"  # --blender before all


def test_time_limit_interrupts_on_posix() -> None:
    class Overtime(Exception):
        pass

    started = time.monotonic()
    with pytest.raises(Overtime), posix.time_limit(0.2, Overtime):
        while time.monotonic() - started < 60:
            time.sleep(0.01)
    with windows.time_limit(0.01, Overtime):  # Windows has no SIGALRM: no limit
        time.sleep(0.05)
