"""The benchmark runs end to end (small sizes) and writes its table and JSON. Timings are
the benchmark's business; this only checks it keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # every section, small, on a busy 2-core machine
def test_benchmark_runs_and_reports_every_section(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--skip", "blender",
         "--scale-workers", "200", "--json", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(output.read_text())
    assert figures["farm"]["throughput"] > 0 and figures["rq"]["throughput"] > 0
    assert 0 < figures["farm"]["p50_ms"] <= figures["farm"]["p99_ms"]
    assert figures["scale"]["workers"] == 200
    assert 0 < figures["scale"]["dispatch_p50_ms"] <= figures["scale"]["dispatch_all_ms"]
    assert figures["scale"]["server_peak_mb"] > 0
    dashboards = figures["dashboards"]
    assert dashboards["viewers"] == 20 and dashboards["backlog"] == 20_000
    assert dashboards["throughput_0"] > 0 and dashboards["throughput_open"] > 0
    assert dashboards["stream_mb"] > 0  # the 20 streams did receive their updates
    big = figures["million"]
    assert big["tasks"] == 20_000 and big["throughput"] > 0 and big["pings"] > 0
    assert big["server_peak_mb"] > 0 and big["restart_s"] > 0
    journal = figures["million_journal"]  # the same job on a server that never snapshots
    assert journal["snapshots"] == 0 and journal["restart_s"] > 0
    assert "journal.bin" in journal["state_files"]
    assert not [name for name in journal["state_files"] if name.startswith("snapshot")]
    assert figures["results"]["tasks"] == 30 and figures["results"]["results_whole"]
    cost, small = figures["cost"], figures["small"]
    assert cost["throughput"] > 0 and cost["server_cpu_us"] > 0 and len(cost["agent_cpu_us"]) == 2
    assert small["jobs"] == 200 and small["small_rate"] > 0 and small["big_rate"] > 0
    assert small["viewers"] == 20 and small["watched_stream_mb"] > 0
    table = done.stdout
    assert "no-op throughput (2,000 tasks, 2 workers)" in table
    assert "(RQ)" in table and "200 workers: dispatch p99" in table
    assert "no-op throughput, 0 dashboards open" in table and "20 dashboards open" in table
    assert "20,000-task job: throughput" in table and "restart from its state" in table
    assert "its restart, replaying the journal" in table
    assert "30 results of 1 MB: server memory peak" in table
    assert "CPU per task: server; each agent" in table and "200 jobs of 4 tasks" in table
    assert "same, 20 dashboards open" in table
    assert "machine: " in table


def test_worker_cost_benchmark_prints_cpu_per_process_and_leases_per_task(
    tmp_path: Path,
) -> None:
    output = tmp_path / "cost.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "worker_cost.py"), "--tasks", "600",
         "--jobs", "60", "--per-job", "4", "--json", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(output.read_text())
    cost, small = figures["worker_cost"], figures["small_jobs"]
    assert cost["throughput"] > 0 and cost["server_cpu_us"] > 0
    assert len(cost["agent_cpu_us"]) == 2 and all(len(c) == 1 for c in cost["child_cpu_us"])
    assert small["small_rate"] > 0 and small["big_rate"] > 0
    assert small["small_leases_per_task"] >= 1 and small["big_leases_per_task"] >= 1
    assert "CPU per task: server" in done.stdout and "leases a task" in done.stdout
