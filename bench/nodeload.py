"""The Node.js load generator (bench/grpcjs/loadgen.js) as worker processes: each LoadPlan goes
out as a JSON file, each LoadResult comes back as one."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from bench.loadgen import LoadPlan, LoadResult
from services.ops.mesh.binaries import BinaryNotFound, find_binary
from services.ops.mesh.process import ManagedProcess

GRPCJS_DIR = Path(__file__).resolve().parent / "grpcjs"
RESULT_FIELDS = frozenset(f.name for f in fields(LoadResult))


class NodePackagesMissing(RuntimeError):
    """Node.js, or the npm packages of one of bench/'s Node.js programs, are not installed."""


def require_node(package_dir: Path = GRPCJS_DIR) -> Path:
    """The `node` binary, once `package_dir`'s node_modules is in place."""
    if not (package_dir / "node_modules").is_dir():
        raise NodePackagesMissing(
            f"{package_dir / 'node_modules'} is missing: "
            f"run `make install` (or `cd {os.path.relpath(package_dir)} && npm ci`)"
        )
    try:
        return find_binary("node")
    except BinaryNotFound as error:
        raise NodePackagesMissing("node is not on PATH (Node.js 20 or later)") from error


def plan_json(plan: LoadPlan) -> str:
    """The plan as loadgen.js reads it: the same field names (driver_tokens keyed by the index as
    a string, as JSON keys are)."""
    return json.dumps(asdict(plan))


def load_result(data: dict[str, Any]) -> LoadResult:
    """A worker's JSON as a LoadResult; fails unless it has exactly LoadResult's fields."""
    if set(data) != RESULT_FIELDS:
        raise ValueError(f"not a LoadResult: fields {sorted(set(data) ^ RESULT_FIELDS)} differ")
    return LoadResult(
        **{**data, "rejected": Counter(data["rejected"]), "errors": Counter(data["errors"])}
    )


def run_workers(plans: Sequence[LoadPlan], deadline: float) -> list[LoadResult]:
    """One loadgen.js per plan, run until each exits or the wall-clock `deadline` passes (then
    stopped by PID); their results, or an error naming the worker that wrote none."""
    node = require_node()
    with tempfile.TemporaryDirectory(prefix="ridemesh-loadgen-") as tmp:
        directory = Path(tmp)
        workers: list[tuple[ManagedProcess, Path]] = []
        try:
            for w, plan in enumerate(plans):
                plan_path, out = directory / f"plan-{w}.json", directory / f"result-{w}.json"
                plan_path.write_text(plan_json(plan))
                argv = [str(node), str(GRPCJS_DIR / "loadgen.js"), "--plan", str(plan_path)]
                worker = ManagedProcess(
                    f"loadgen-{w}", [*argv, "--out", str(out)], directory / f"loadgen-{w}.log"
                )
                workers.append((worker.start(), out))
            for worker, _ in workers:
                worker.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass  # the ones still running are stopped below and reported as missing
        finally:
            for worker, _ in workers:
                worker.stop(grace=5.0)  # our own children, by PID
        return [_result(worker, out) for worker, out in workers]


def _result(worker: ManagedProcess, out: Path) -> LoadResult:
    if worker.returncode != 0 or not out.exists():
        raise RuntimeError(f"{worker.name} exited with {worker.returncode}:\n{worker.log_tail()}")
    return load_result(json.loads(out.read_text()))
