"""`tokenize-corpus --address` on a real two-node Ray cluster started in the test: a head and a second node, each
with one CPU, both launched with the venv's `ray start` on this machine (own temporary folder, free ports, no
dashboard). Every row must come back exactly once with the codes of a single-process encode (each CPU encoder
actor runs one torch thread); a node killed with SIGKILL in the middle of a run must lose nothing and duplicate
nothing once the job is run again.

The cluster is `ray_cluster.LocalCluster` (shared with bench/bench_corpus.py). Teardown stops exactly the processes
this module started: each `ray start --block` leads its own process group (the node's GCS, raylet, agents and
workers are in it), and the group is terminated, then killed. It never runs `ray stop`, which would stop every Ray
on the machine. Time is bounded by explicit deadlines on every wait.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="the cluster test needs Ray: pip install 'mimistack[corpus]'")
pytest.importorskip("pyarrow")
torch = pytest.importorskip("torch")

from corpus_checks import check_errors_table, write_audio_dir  # noqa: E402
from mimistack import corpus  # noqa: E402
from mimistack.audio import load_audio  # noqa: E402
from mimistack.codec import Codec  # noqa: E402
from mimistack.engine.options import TorchOptions  # noqa: E402
from ray_cluster import RAY, LocalCluster  # noqa: E402

RUN_TIMEOUT = 240.0
if not RAY.is_file():
    pytest.skip(f"no ray program beside {sys.executable}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    root = Path(tempfile.mkdtemp(prefix="mimi-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    nodes = LocalCluster(root)
    try:
        nodes.start(head=True)
        nodes.start(head=False)
        assert nodes.alive_cpus() == 2.0, "a head and a second node, one CPU each"
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory, speech: list[Path]) -> Path:
    return write_audio_dir(tmp_path_factory.mktemp("audio"), speech)


@pytest.fixture(scope="module")
def reference(audio_dir: Path, tiny_checkpoint: Path) -> dict[str, np.ndarray]:
    """id -> codes of `Codec.encode(load_audio(file))` on one torch thread, as each CPU encoder actor runs."""
    before = torch.get_num_threads()
    try:
        codec = Codec.load(tiny_checkpoint, TorchOptions(num_threads=1))
        paths = {"a": audio_dir / "a.wav", "b": audio_dir / "b.wav", "sub/c": audio_dir / "sub" / "c.flac"}
        return {key: codec.encode(load_audio(path)).codes for key, path in paths.items()}
    finally:
        torch.set_num_threads(before)


def tokenize_command(inputs: Path, out: Path, checkpoint: Path, address: str, per_shard: int) -> list[str]:
    return [
        *(sys.executable, "-m", "mimistack.cli", "tokenize-corpus", str(inputs), "-o", str(out)),
        *("--weights", str(checkpoint), "--files-per-shard", str(per_shard), "--address", address, "-q"),
    ]


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def codes_by_id(out: Path) -> dict[str, np.ndarray]:
    found = [(r.id, r.grid.codes) for r in corpus.open(out)]
    assert len({key for key, _ in found}) == len(found), "an id twice"
    return dict(found)


def test_two_node_run_gives_every_row_once_with_single_process_codes(
    cluster: LocalCluster, audio_dir: Path, tiny_checkpoint: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "tokens"
    run(tokenize_command(audio_dir, out, tiny_checkpoint, cluster.address, 2), cluster.env)
    got = codes_by_id(out)
    assert sorted(got) == sorted(reference)
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, reference[key], err_msg=key)
    check_errors_table(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["last_run"]["runner"] == "ray"
    assert manifest["counts"] == {
        "files": 6,
        "files_done": 6,
        "rows": 3,
        "errors": 3,
        "pending": 0,
        "shards": 3,
        "units": 3,
    }


def test_a_node_killed_mid_run_loses_nothing_after_a_rerun(
    cluster: LocalCluster, audio_dir: Path, tiny_checkpoint: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """The second node is killed (SIGKILL, its whole process group) once the first shard is written. Whatever the
    interrupted driver does then (Ray Data retries the lost actor's batches on the head and finishes, as Ray 2.60
    does here; or it fails, or waits: it gets a deadline, then SIGKILL), a rerun on the surviving head gives every
    row exactly once, with the single-process codes."""
    sources = {"a": audio_dir / "a.wav", "b": audio_dir / "b.wav", "sub/c": audio_dir / "sub" / "c.flac"}
    rows = 96
    entries = [{"id": f"u{i}", "path": str(list(sources.values())[i % 3])} for i in range(rows)]
    expected = {f"u{i}": reference[list(sources)[i % 3]] for i in range(rows)}
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    out = tmp_path / "tokens"
    command = tokenize_command(manifest, out, tiny_checkpoint, cluster.address, 1)
    with (tmp_path / "driver.log").open("wb") as log:
        driver = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not list((out / "shards").glob("part-*.parquet")):
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no shard before the run ended: {(tmp_path / 'driver.log').read_text()[-3000:]}")
            time.sleep(0.02)
        cluster.kill(cluster.nodes[1])
        at_kill = len(list((out / "shards").glob("part-*.parquet")))
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGKILL)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert 1 <= at_kill < rows, f"the kill should land mid-run ({at_kill} of {rows} shards written)"
    assert cluster.alive_cpus() == 1.0, "the second node is gone"
    before = len(list((out / "shards").glob("part-*.parquet")))
    if driver.returncode == 0:  # Ray retried the lost actor's work on the head: a success must be complete
        assert before == rows, (tmp_path / "driver.log").read_text()[-3000:]

    rerun = run(command, cluster.env)
    if before < rows:
        assert f"{before} files were done before" in rerun.stdout, rerun.stdout
    got = codes_by_id(out)
    assert sorted(got) == sorted(expected), "every row exactly once"
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, expected[key], err_msg=key)
    summary = json.loads((out / "manifest.json").read_text())
    assert summary["complete"] and summary["counts"]["rows"] == rows and summary["counts"]["shards"] == rows
    assert not [p.name for p in (out / "shards").iterdir() if "tmp" in p.name]
