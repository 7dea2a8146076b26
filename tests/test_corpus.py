"""Tests for `mimistack.corpus` and `mimistack.cli_corpus`: tokenize a small corpus with the Ray runner (on local
Ray), resume after a crash, read it back, export it flat; and check that the local runner writes the same folder.

One module-scoped local Ray (2 CPUs) serves every test: Ray's start is the slow part. Reference codes come from a
plain single-process `Codec.encode(load_audio(file))`. The local runner's own tests are in test_corpus_local.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason="corpus tests need Ray Data: pip install 'mimistack[corpus]'")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402 - after the importorskip that names the extra

from corpus_checks import check_errors_table, check_rerun_skips_everything, write_audio_dir  # noqa: E402
from mimistack import corpus  # noqa: E402
from mimistack.audio import load_audio  # noqa: E402
from mimistack.cli import main  # noqa: E402
from mimistack.codec import Codec  # noqa: E402
from mimistack.corpus import CorpusError, collect_inputs, export_flat, iter_flat, tokenize_corpus  # noqa: E402
from mimistack.testing import write_random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster() -> object:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1"
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory, speech: list[Path]) -> Path:
    return write_audio_dir(tmp_path_factory.mktemp("audio"), speech)


@pytest.fixture(scope="module")
def reference(audio_dir: Path, tiny_codec: Codec) -> dict[str, np.ndarray]:
    """id -> codes `[32, T]` from a plain single-process encode of each good file."""
    files = {"a": audio_dir / "a.wav", "b": audio_dir / "b.wav", "sub/c": audio_dir / "sub" / "c.flac"}
    return {key: encode_on_one_thread(tiny_codec, path) for key, path in files.items()}


def encode_on_one_thread(codec: Codec, path: Path) -> np.ndarray:
    """`Codec.encode(load_audio(path)).codes` with torch on one thread, as each CPU encoder actor runs: the thread
    count sets the summation order, which can flip a near-tied token (it does on one frame of `b`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return codec.encode(load_audio(path)).codes
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenized(
    ray_cluster: object, audio_dir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The folder, tokenized once through the CLI (2 files per shard)."""
    out = tmp_path_factory.mktemp("runs") / "tokens"
    code = main(
        [
            "tokenize-corpus",
            str(audio_dir),
            "-o",
            str(out),
            "--weights",
            str(tiny_checkpoint),
            "--files-per-shard",
            "2",
            "--runner",
            "ray",
            "-q",
        ]
    )
    assert code == 0
    return out


def assert_matches_reference(out: Path, reference: dict[str, np.ndarray]) -> None:
    records = list(corpus.open(out))
    assert sorted(r.id for r in records) == sorted(reference), "every good file exactly once"
    for record in records:
        np.testing.assert_array_equal(record.grid.codes, reference[record.id], err_msg=record.id)
        assert record.grid.num_frames == reference[record.id].shape[1]


# -- the pipeline -------------------------------------------------------------------------------------------
def test_codes_equal_single_process_encode(
    tokenized: Path, reference: dict[str, np.ndarray], tiny_codec: Codec, audio_dir: Path
) -> None:
    assert_matches_reference(tokenized, reference)
    record = next(r for r in corpus.open(tokenized) if r.id == "sub/c")
    assert record.source_path == str(audio_dir / "sub" / "c.flac")
    assert record.grid.num_samples == len(load_audio(audio_dir / "sub" / "c.flac"))
    assert record.grid.weights_sha256 == tiny_codec.weights_sha256


def test_shards_follow_the_documented_schema(tokenized: Path, tiny_codec: Codec) -> None:
    shards = sorted((tokenized / "shards").glob("part-*.parquet"))
    assert [p.name for p in shards] == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    table = pa.concat_tables(pq.read_table(p) for p in shards)
    assert table.schema.names == [
        "id",
        "source_path",
        "duration_s",
        "num_samples",
        "num_frames",
        "codes",
        "weights_sha256",
        "mimistack_version",
    ]
    assert table.schema.field("codes").type == pa.list_(pa.list_(pa.uint16(), 32))
    rows = table.to_pylist()
    for row in rows:
        assert len(row["codes"]) == row["num_frames"] == -(-row["num_samples"] // 1920)
        assert row["duration_s"] == pytest.approx(row["num_samples"] / 24_000)
        assert row["weights_sha256"] == tiny_codec.weights_sha256
    manifest = json.loads((tokenized / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["counts"] == {
        "files": 6,
        "files_done": 6,
        "rows": 3,
        "errors": 3,
        "pending": 0,
        "shards": 3,
        "units": 3,
    }
    assert manifest["audio"]["seconds"] == pytest.approx(sum(r["duration_s"] for r in rows), abs=1e-2)
    assert sum(s["rows"] for s in manifest["shards"]) == 3
    assert manifest["weights"]["sha256"] == tiny_codec.weights_sha256


def test_bad_files_are_in_the_errors_table_with_reasons(tokenized: Path) -> None:
    check_errors_table(tokenized)


def test_rerun_skips_everything(tokenized: Path, audio_dir: Path, tiny_checkpoint: Path) -> None:
    check_rerun_skips_everything(tokenized, audio_dir, tiny_checkpoint, "ray")


def test_sigkill_mid_run_then_resume_gives_every_row_once(
    ray_cluster: object, audio_dir: Path, tiny_checkpoint: Path, tiny_codec: Codec, tmp_path: Path
) -> None:
    """A real crash: a `tokenize-corpus --address` driver (on the running cluster) is killed with SIGKILL as soon
    as its first shard appears; the resumed run must give every id exactly once with the right codes."""
    import ray

    source = audio_dir / "a.wav"
    manifest = tmp_path / "list.jsonl"
    rows = 24  # enough work units that the first shard appears well before the last (actors batch several units)
    entries = [{"id": f"u{index}", "path": str(source)} for index in range(rows)]
    entries.insert(3, {"id": "broken", "path": str(audio_dir / "corrupt.wav")})
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    out = tmp_path / "tokens"
    command = [
        sys.executable,
        "-m",
        "mimistack.cli",
        "tokenize-corpus",
        str(manifest),
        "-o",
        str(out),
        "--weights",
        str(tiny_checkpoint),
        "--files-per-shard",
        "1",
        "--address",
        ray.get_runtime_context().gcs_address,
        "-q",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not list((out / "shards").glob("part-*.parquet")) and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the run ended before writing a shard: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    done = len(list((out / "shards").glob("part-*.parquet")))
    assert 1 <= done < rows + 1, f"the kill should land mid-run ({done} of {rows + 1} shards written)"
    assert not (out / "manifest.json").exists()
    # What a kill in the middle of writing a shard leaves behind: a temporary file, never a shard.
    (out / "shards" / f".part-{rows:06d}.parquet.tmp-x1").write_bytes(b"half a shard")

    result = tokenize_corpus(manifest, out, tiny_checkpoint, runner="ray")
    assert (result.files_skipped, result.files_processed) == (done, rows + 1 - done)
    assert not [p.name for p in (out / "shards").iterdir() if "tmp" in p.name]
    expected = encode_on_one_thread(tiny_codec, source)
    records = list(corpus.open(out))
    assert sorted(r.id for r in records) == sorted(f"u{i}" for i in range(rows))
    for record in records:
        np.testing.assert_array_equal(record.grid.codes, expected)
    assert [e["id"] for e in corpus.open(out).errors()] == ["broken"]
    assert result.manifest["complete"] and result.manifest["counts"]["rows"] == rows


def test_local_runner_writes_what_ray_writes(
    tokenized: Path, audio_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The same inputs through the local runner (on one torch thread, as each Ray CPU actor runs): the same shard
    files with the same rows and footers, the same errors table, the same manifest but for its time and runner."""
    import torch

    out = tmp_path / "local"
    threads = torch.get_num_threads()
    try:
        result = tokenize_corpus(audio_dir, out, tiny_checkpoint, runner="local", threads=1, files_per_shard=2)
    finally:
        torch.set_num_threads(threads)
    assert result.manifest["last_run"]["runner"] == "local"
    names = sorted(p.name for p in (tokenized / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == names
    for name in names:
        ray_shard, local_shard = tokenized / "shards" / name, out / "shards" / name
        assert pq.read_table(local_shard).equals(pq.read_table(ray_shard)), name
        assert corpus.layout.shard_meta(local_shard) == corpus.layout.shard_meta(ray_shard), name
    assert (out / "plan.parquet").read_bytes() == (tokenized / "plan.parquet").read_bytes()
    assert (out / "errors.jsonl").read_text() == (tokenized / "errors.jsonl").read_text()
    ray_manifest, local_manifest = (json.loads((f / "manifest.json").read_text()) for f in (tokenized, out))
    assert set(local_manifest) == set(ray_manifest)
    for key in ("updated", "last_run"):
        local_manifest.pop(key), ray_manifest.pop(key)
    assert local_manifest == ray_manifest


def test_new_files_extend_a_finished_corpus(
    tokenized: Path, audio_dir: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in (tokenized / "shards").iterdir():
        (copy / "shards").mkdir(exist_ok=True)
        (copy / "shards" / path.name).write_bytes(path.read_bytes())
    (copy / "plan.parquet").write_bytes((tokenized / "plan.parquet").read_bytes())
    plan = corpus.layout.read_plan(copy)
    assert plan is not None
    extended, added = corpus.layout.extend_plan(
        plan, [*collect_inputs(audio_dir), corpus.CorpusInput("new", "/x.wav")], plan.weights_sha256, 99
    )
    assert (
        added == 1 and extended.units[:-1] == plan.units and extended.units[-1] == [corpus.CorpusInput("new", "/x.wav")]
    )


# -- refusals -----------------------------------------------------------------------------------------------
def test_refuses_codes_from_other_weights(tokenized: Path, audio_dir: Path, tmp_path: Path) -> None:
    other = write_random_checkpoint(tmp_path / "other.safetensors", "tiny", seed=5)
    with pytest.raises(CorpusError, match="must not be mixed"):
        tokenize_corpus(audio_dir, tokenized, other)


def test_refuses_a_folder_that_is_not_a_corpus(audio_dir: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(CorpusError, match="not a tokenize-corpus output"):
        tokenize_corpus(audio_dir, audio_dir, tiny_checkpoint)


def test_refuses_a_second_concurrent_run(tokenized: Path, audio_dir: Path, tiny_checkpoint: Path) -> None:
    with corpus.layout.FolderLock(tokenized), pytest.raises(CorpusError, match="another tokenize-corpus run"):
        tokenize_corpus(audio_dir, tokenized, tiny_checkpoint)


def test_fast_path_through_the_cli(
    ray_cluster: object, audio_dir: Path, tiny_checkpoint: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """--fast runs the engine's whole-input path in the actors; in float32 that is the same function in another
    summation order, and the manifest records the setting."""
    out = tmp_path / "fast"
    assert (
        main(
            [
                "tokenize-corpus",
                str(audio_dir),
                "-o",
                str(out),
                "--weights",
                str(tiny_checkpoint),
                "--fast",
                "--runner",
                "ray",
                "-q",
            ]
        )
        == 0
    )
    records = {r.id: r.grid.codes for r in corpus.open(out)}
    assert sorted(records) == sorted(reference)
    for key, codes in records.items():
        assert codes.shape == reference[key].shape
        assert float((codes == reference[key]).mean()) >= 0.97, key
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["fast"] is True
    assert (
        main(
            [
                "tokenize-corpus",
                str(audio_dir),
                "-o",
                str(tmp_path / "x"),
                "--weights",
                str(tiny_checkpoint),
                "--fast",
                "--engine",
                "onnx",
                "-q",
            ]
        )
        == 2
    )


def test_cli_reports_bad_input(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "tokenize-corpus",
            str(tmp_path / "missing"),
            "-o",
            str(tmp_path / "out"),
            "--weights",
            str(tiny_checkpoint),
            "-q",
        ]
    )
    assert code == 2
    assert "input not found" in capsys.readouterr().err


# -- inputs -------------------------------------------------------------------------------------------------
def test_input_formats_name_the_same_files(audio_dir: Path, tmp_path: Path) -> None:
    expected = {"a": audio_dir / "a.wav", "b": audio_dir / "b.wav", "sub/c": audio_dir / "sub" / "c.flac"}
    folder = {i.id: Path(i.path) for i in collect_inputs(audio_dir)}
    assert folder == {
        **expected,
        "corrupt": audio_dir / "corrupt.wav",
        "empty": audio_dir / "empty.wav",
        "notes": audio_dir / "notes.mp3",
    }
    globbed = {i.id: Path(i.path) for i in collect_inputs(str(audio_dir / "**" / "[abc].*"))}
    assert globbed == expected
    # Manifests: relative paths are relative to the manifest; a missing id is the path without suffix.
    (tmp_path / "m.csv").write_text(
        f"path,id\n{audio_dir / 'a.wav'},a\n{audio_dir / 'b.wav'},b\n{audio_dir / 'sub' / 'c.flac'},sub/c\n"
    )
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"path": str(p), "id": key}) + "\n" for key, p in expected.items())
    )
    pq.write_table(
        pa.table({"id": list(expected), "path": [str(p) for p in expected.values()]}), tmp_path / "m.parquet"
    )
    for name in ("m.csv", "m.jsonl", "m.parquet"):
        assert {i.id: Path(i.path) for i in collect_inputs(tmp_path / name)} == expected, name
    (audio_dir.parent / "rel.csv").write_text(f"path\n{audio_dir.name}/a.wav\n")
    assert collect_inputs(audio_dir.parent / "rel.csv") == [
        corpus.CorpusInput(f"{audio_dir.name}/a", str(audio_dir / "a.wav"))
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("id\nx\n", "no 'path'", id="csv-without-path"),
        pytest.param("path,id\n/a.wav,x\n/b.wav,x\n", "duplicate id", id="duplicate-ids"),
    ],
)
def test_bad_manifests_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(CorpusError, match=message):
        collect_inputs(tmp_path / "m.csv")


def test_missing_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="input not found"):
        collect_inputs(tmp_path / "nothing-*.wav")


def test_duration_groups_respect_the_budget() -> None:
    lengths = [100, 900, 300, 880, 290, 50]
    groups = corpus.workers.duration_groups(lengths, 1800)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 1800 for g in groups)
    assert groups[0] == [1, 3]
    assert corpus.workers.duration_groups(lengths, 0) == [[1], [3], [2], [4], [0], [5]]


# -- reading back -------------------------------------------------------------------------------------------
def test_export_flat_round_trip(tokenized: Path, reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    export = export_flat(tokenized, tmp_path / "flat", levels="0-7")
    assert export.levels == tuple(range(8))
    meta = json.loads(export.meta.read_text())
    assert meta["dtype"] == "uint16" and meta["byte_order"] == "little" and meta["levels"] == list(range(8))
    tokens = np.memmap(export.tokens, dtype="<u2", mode="r")
    offsets = np.load(export.index)
    ids = export.ids.read_text().splitlines()
    assert offsets[-1] == tokens.size == export.num_tokens == sum(c[:8].size for c in reference.values())
    for u, identifier in enumerate(ids):
        frames = tokens[offsets[u] : offsets[u + 1]].reshape(-1, 8)  # frame-major: [T, levels]
        np.testing.assert_array_equal(frames.T, reference[identifier][:8])
    assert {i: c.tolist() for i, c in iter_flat(export.folder)} == {i: reference[i][:8].tolist() for i in ids}
    with pytest.raises(FileExistsError):
        export_flat(tokenized, tmp_path / "flat")
    odd = export_flat(tokenized, tmp_path / "flat", levels="0,5", force=True)
    assert {i: c.tolist() for i, c in iter_flat(odd.folder)} == {i: reference[i][[0, 5]].tolist() for i in ids}


def test_cli_export(tokenized: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["corpus-export", str(tokenized), "-o", str(tmp_path / "flat"), "--levels", "0-3"]) == 0
    assert json.loads((tmp_path / "flat" / "meta.json").read_text())["levels"] == [0, 1, 2, 3]
    assert main(["corpus-export", str(tokenized), "-o", str(tmp_path / "flat")]) == 2
    assert "exists" in capsys.readouterr().err
