"""Tests for the local runner of `mimistack.corpus` (`tokenize-corpus` without `--address`): the same shards,
manifest, errors table and resume as the Ray runner, in one process, without Ray.

Reference codes come from `Codec.encode(load_audio(file))` on the torch thread count the run used (the thread count
sets the summation order, which can flip a near-tied token). Most runs here use one thread (`threads=1`): tiny
models run far faster on one thread than through OpenMP barriers on a busy 2-core machine. The comparison with a
Ray run of the same inputs is in test_corpus.py, next to its Ray fixture.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402 - after the importorskip that names the extra

from corpus_checks import COLUMNS, check_errors_table, check_rerun_skips_everything, write_audio_dir  # noqa: E402
from mimistack import corpus  # noqa: E402
from mimistack.audio import load_audio  # noqa: E402
from mimistack.cli import main  # noqa: E402
from mimistack.codec import Codec  # noqa: E402
from mimistack.corpus import CorpusError, tokenize_corpus  # noqa: E402
from mimistack.corpus.units import available_cpus  # noqa: E402
from mimistack.engine.options import TorchOptions  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory, speech: list[Path]) -> Path:
    return write_audio_dir(tmp_path_factory.mktemp("audio"), speech)


def good_files(audio_dir: Path) -> dict[str, Path]:
    return {"a": audio_dir / "a.wav", "b": audio_dir / "b.wav", "sub/c": audio_dir / "sub" / "c.flac"}


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Tests that load codecs on other thread counts leave torch's process-wide setting as they found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def encode_on(checkpoint: Path, threads: int, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """id -> `Codec.encode(load_audio(path)).codes` with torch on `threads` threads."""
    before = torch.get_num_threads()
    try:
        codec = Codec.load(checkpoint, TorchOptions(num_threads=threads))
        return {key: codec.encode(load_audio(path)).codes for key, path in paths.items()}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(audio_dir: Path, tiny_checkpoint: Path) -> dict[str, np.ndarray]:
    return encode_on(tiny_checkpoint, 1, good_files(audio_dir))


@pytest.fixture(scope="module")
def tokenized(audio_dir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder, tokenized once through the CLI with the default runner (auto: local), 2 files per shard."""
    out = tmp_path_factory.mktemp("runs") / "tokens"
    threads = torch.get_num_threads()
    try:
        argv = ["tokenize-corpus", str(audio_dir), "-o", str(out), "--weights", str(tiny_checkpoint)]
        assert main([*argv, "--files-per-shard", "2", "--threads", "1", "-q"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def records(out: Path) -> dict[str, np.ndarray]:
    found = [(r.id, r.grid.codes) for r in corpus.open(out)]
    assert len({key for key, _ in found}) == len(found), "an id twice"
    return dict(found)


def assert_codes(out: Path, expected: dict[str, np.ndarray]) -> None:
    got = records(out)
    assert sorted(got) == sorted(expected), "every good file exactly once"
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, expected[key], err_msg=key)


def decode_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("mimistack-decode")]


# -- what a local run writes ---------------------------------------------------------------------------------
def test_local_run_writes_the_documented_shards_and_manifest(
    tokenized: Path, reference: dict[str, np.ndarray], tiny_codec: Codec, audio_dir: Path
) -> None:
    assert_codes(tokenized, reference)
    shards = sorted((tokenized / "shards").glob("part-*.parquet"))
    assert [p.name for p in shards] == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    plan = corpus.layout.read_plan(tokenized)
    assert plan is not None
    for unit, shard in enumerate(shards):
        table = pq.read_table(shard)
        assert table.schema.names == COLUMNS
        assert table.schema.field("codes").type == pa.list_(pa.list_(pa.uint16(), 32))
        meta = corpus.layout.shard_meta(shard)
        assert meta["unit"] == unit
        planned = [item.id for item in plan.units[unit]]
        ids, failed = table.column("id").to_pylist(), [e["id"] for e in meta["errors"]]
        assert ids == [i for i in planned if i not in failed], "the unit's good files, in plan order"
        assert sorted(ids + failed) == sorted(planned)
        for row in table.to_pylist():
            assert len(row["codes"]) == row["num_frames"] == -(-row["num_samples"] // 1920)
            assert row["duration_s"] == pytest.approx(row["num_samples"] / 24_000)
            assert row["weights_sha256"] == tiny_codec.weights_sha256
            assert row["source_path"] == str(good_files(audio_dir)[row["id"]])
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
    assert manifest["last_run"] == {
        "runner": "local",
        "engine": "torch",
        "device": "cpu",
        "dtype": "float32",
        "fast": False,
    }
    assert manifest["weights"]["sha256"] == tiny_codec.weights_sha256
    assert manifest["schema"]["columns"] == corpus.layout.COLUMNS
    assert not [p.name for p in (tokenized / "shards").iterdir() if "tmp" in p.name]


def test_bad_files_are_in_the_errors_table_with_reasons(tokenized: Path) -> None:
    check_errors_table(tokenized)


def test_rerun_skips_everything(tokenized: Path, audio_dir: Path, tiny_checkpoint: Path) -> None:
    check_rerun_skips_everything(tokenized, audio_dir, tiny_checkpoint, "local")


def test_codec_runs_on_every_cpu_and_the_thread_count_is_restored(
    audio_dir: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    """Without --threads the codec uses every CPU (as the plain loop does); the codes are those of `Codec.encode`
    on that many threads, and torch's process-wide setting is put back afterwards."""
    cpus = available_cpus()
    seen: list[int] = []
    encode_batch = Codec.encode_batch

    def spy(self: Codec, pcms: list[np.ndarray], sample_rate: int | None = None) -> list[object]:
        seen.append(torch.get_num_threads())
        return encode_batch(self, pcms, sample_rate)

    monkeypatch.setattr(Codec, "encode_batch", spy)
    torch.set_num_threads(1)
    source = good_files(audio_dir)["a"]
    result = tokenize_corpus(source, tmp_path / "out", tiny_checkpoint)
    assert seen == [cpus]
    assert torch.get_num_threads() == 1, "the run restores torch's thread count"
    assert result.manifest["last_run"]["runner"] == "local"
    monkeypatch.undo()
    assert_codes(tmp_path / "out", encode_on(tiny_checkpoint, cpus, {"a": source}))


def test_batch_seconds_packs_short_files_into_encode_batch_calls(
    audio_dir: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    """With --batch-seconds the local runner groups decoded files by duration (`workers.duration_groups`, as the
    Ray actors do) and encodes each group in one `Codec.encode_batch` call: its codes are that call's."""
    calls: list[int] = []
    encode_batch = Codec.encode_batch

    def spy(self: Codec, pcms: list[np.ndarray], sample_rate: int | None = None) -> list[object]:
        calls.append(len(pcms))
        return encode_batch(self, pcms, sample_rate)

    monkeypatch.setattr(Codec, "encode_batch", spy)
    result = tokenize_corpus(audio_dir, tmp_path / "out", tiny_checkpoint, threads=1, batch_seconds=60)
    assert calls == [3], "the three good files fit in one 60 s batch"
    assert (result.rows_written, result.errors) == (3, 3)
    monkeypatch.undo()
    files = good_files(audio_dir)
    pcms = {key: load_audio(path) for key, path in files.items()}
    keys = list(pcms)
    [group] = corpus.workers.duration_groups([len(pcms[k]) for k in keys], 60 * 24_000)
    codec = Codec.load(tiny_checkpoint, TorchOptions(num_threads=1))
    grids = codec.encode_batch([pcms[keys[i]] for i in group])
    assert_codes(tmp_path / "out", {keys[i]: grid.codes for i, grid in zip(group, grids)})


def test_decoding_ahead_keeps_plan_order_and_bounds_the_look_ahead(audio_dir: Path) -> None:
    """Several decode threads (as on GPU) still hand files over in plan order, never more than `ahead` beyond the
    one handed out, and leaving early stops them."""
    names = ["a.wav", "corrupt.wav", "b.wav", "sub/c.flac", "empty.wav"] * 3
    rows = [
        corpus.workers.FileRow(unit=i // 4, position=i % 4, id=str(i), path=str(audio_dir / n), sample_rate=24_000)
        for i, n in enumerate(names)
    ]
    with corpus.local.decoded_ahead(rows, threads=3, ahead=4) as decoded:
        out = list(decoded)
    assert [row["id"] for row, _, _ in out] == [str(i) for i in range(len(rows))]
    for (_, pcm, error), name in zip(out, names):
        assert (pcm is None) == bool(error) == (name in ("corrupt.wav", "empty.wav")), name
    started: list[str] = []
    decode_file = corpus.workers.decode_file

    def counting(path: str, sample_rate: int) -> tuple[object, str]:
        started.append(path)
        return decode_file(path, sample_rate)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus.local, "decode_file", counting)
        with corpus.local.decoded_ahead(rows, threads=1, ahead=2) as decoded:
            next(decoded)
            time.sleep(0.2)
            assert len(started) <= 1 + 2
    assert not decode_threads()


# -- resume --------------------------------------------------------------------------------------------------
def test_exception_after_the_first_shard_then_resume_gives_every_row_once(
    audio_dir: Path,
    tiny_checkpoint: Path,
    reference: dict[str, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that dies after writing its first shard keeps that shard, leaves no temporary file, no decode thread
    and no lock behind; the rerun redoes only the other units."""
    out = tmp_path / "tokens"
    write_shard = corpus.units.write_shard
    written: list[int] = []

    def failing(folder: Path, unit: int, ordered: object, identity: object) -> tuple[int, int]:
        if written:
            raise RuntimeError("injected failure")
        written.append(unit)
        return write_shard(folder, unit, ordered, identity)  # type: ignore[arg-type]

    monkeypatch.setattr(corpus.units, "write_shard", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        tokenize_corpus(audio_dir, out, tiny_checkpoint, threads=1, files_per_shard=2)
    monkeypatch.undo()
    assert [p.name for p in (out / "shards").iterdir()] == ["part-000000.parquet"]
    assert not decode_threads(), "the decode threads stop with the run"
    assert not (out / "manifest.json").exists()
    with corpus.layout.FolderLock(out):  # the lock was released
        pass
    (out / "shards" / ".part-000001.parquet.tmp-x1").write_bytes(b"half a shard")

    result = tokenize_corpus(audio_dir, out, tiny_checkpoint, threads=1)
    assert (result.files_skipped, result.files_processed) == (2, 4)
    assert not [p.name for p in (out / "shards").iterdir() if "tmp" in p.name]
    assert_codes(out, reference)
    assert {e["id"] for e in corpus.open(out).errors()} == {"corrupt", "empty", "notes"}
    assert result.manifest["complete"] and result.manifest["counts"]["rows"] == 3


def test_sigkill_mid_run_then_resume_gives_every_row_once(
    audio_dir: Path, tiny_checkpoint: Path, reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A real crash: a `tokenize-corpus` process (the local runner, one file per shard) is killed with SIGKILL as
    soon as its first shard appears; the resumed run must give every id exactly once with the right codes."""
    source = audio_dir / "a.wav"
    manifest = tmp_path / "list.jsonl"
    rows = 80  # the first shard appears within a few files; the last ~80 tiny encodes later
    entries = [{"id": f"u{index}", "path": str(source)} for index in range(rows)]
    entries.insert(3, {"id": "broken", "path": str(audio_dir / "corrupt.wav")})
    manifest.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    out = tmp_path / "tokens"
    command = [sys.executable, "-m", "mimistack.cli", "tokenize-corpus", str(manifest), "-o", str(out)]
    command += ["--weights", str(tiny_checkpoint), "--files-per-shard", "1", "--threads", "1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not list((out / "shards").glob("part-*.parquet")) and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the run ended before writing a shard: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    done = len(list((out / "shards").glob("part-*.parquet")))
    assert 1 <= done < rows + 1, f"the kill should land mid-run ({done} of {rows + 1} shards written)"
    assert not (out / "manifest.json").exists()
    (out / "shards" / f".part-{rows:06d}.parquet.tmp-x1").write_bytes(b"half a shard")

    result = tokenize_corpus(manifest, out, tiny_checkpoint, threads=1)
    assert (result.files_skipped, result.files_processed) == (done, rows + 1 - done)
    assert not [p.name for p in (out / "shards").iterdir() if "tmp" in p.name]
    assert_codes(out, {f"u{i}": reference["a"] for i in range(rows)})
    assert [e["id"] for e in corpus.open(out).errors()] == ["broken"]
    assert result.manifest["complete"] and result.manifest["counts"]["rows"] == rows
    assert len(list((out / "shards").glob("part-*.parquet"))) == rows + 1


def test_progress_bar_counts_every_file(
    audio_dir: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local runner drives the same bar as the Ray runner: all planned files as the total, the done ones first,
    then one advance per encoded file with the audio so far."""
    events: list[tuple[str, object]] = []

    class Bar:
        def __init__(self, enabled: bool, total_files: int, done_files: int) -> None:
            events.append(("start", (enabled, total_files, done_files)))

        def update(self, files: int, audio_seconds: float, elapsed: float) -> None:
            events.append(("update", (files, audio_seconds)))

        def close(self) -> None:
            events.append(("close", None))

    monkeypatch.setattr(corpus.units, "TokenizeProgress", Bar)
    result = tokenize_corpus(audio_dir, tmp_path / "out", tiny_checkpoint, threads=1, progress=True)
    assert events[0] == ("start", (True, 6, 0)) and events[-1] == ("close", None)
    updates = [value for kind, value in events if kind == "update"]
    assert sum(files for files, _ in updates) == 6  # type: ignore[misc]
    assert updates[-1][1] == pytest.approx(result.audio_seconds)  # type: ignore[index]


# -- choosing the runner -------------------------------------------------------------------------------------
def test_runner_ray_without_ray_is_a_clear_error(
    audio_dir: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the package
    out = tmp_path / "out"
    argv = ["tokenize-corpus", str(audio_dir), "-o", str(out), "--weights", str(tiny_checkpoint), "-q"]
    assert main([*argv, "--runner", "ray"]) == 2
    assert "needs Ray Data: pip install 'mimistack[corpus]'" in capsys.readouterr().err
    assert not out.exists(), "refused before any work"
    with pytest.raises(CorpusError, match="needs Ray Data"):
        tokenize_corpus(audio_dir, out, tiny_checkpoint, address="ray://head:10001")
    result = tokenize_corpus(audio_dir / "a.wav", out, tiny_checkpoint, threads=1)  # the local runner needs no Ray
    assert result.rows_written == 1 and result.manifest["last_run"]["runner"] == "local"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--runner", "local", "--address", "127.0.0.1:6379"], "is a Ray cluster", id="local-address"),
        pytest.param(["--encoders", "2", "--device", "cuda"], "runs several CPU codecs", id="gpu-encoders"),
    ],
)
def test_options_the_local_runner_cannot_honour_are_refused(
    audio_dir: Path,
    tiny_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    argv = ["tokenize-corpus", str(audio_dir), "-o", str(out), "--weights", str(tiny_checkpoint), "-q"]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(CorpusError, match="unknown runner"):
        tokenize_corpus(audio_dir, out, tiny_checkpoint, runner="dask")  # type: ignore[arg-type]


def test_reduced_precision_run_records_its_precision_and_measured_agreement(
    audio_dir: Path, tiny_checkpoint: Path, tokenized: Path, tmp_path: Path, torch_threads: None
) -> None:
    """A bfloat16 run's manifest says so and holds the share of its tokens equal to strict float32 on the first
    files, as recomputed here; a rerun with nothing to do keeps it; the exact float32 run says it is exact."""
    assert json.loads((tokenized / "manifest.json").read_text())["precision"] == {
        "engine": "torch",
        "device": "cpu",
        "dtype": "float32",
        "fast": False,
        "batch_seconds": 0.0,
        "exact": True,
        "agreement": None,
    }
    out = tmp_path / "bf16"
    result = tokenize_corpus(audio_dir, out, tiny_checkpoint, threads=1, dtype="bfloat16", agreement_files=2)
    precision = result.manifest["precision"]
    assert {k: precision[k] for k in ("dtype", "fast", "exact")} == {"dtype": "bfloat16", "fast": False, "exact": False}
    agreement = precision["agreement"]
    assert isinstance(agreement, dict)
    first = list(corpus.open(out))[:2]
    exact = encode_on(tiny_checkpoint, torch.get_num_threads(), {r.id: Path(r.source_path) for r in first})
    per_level = sum((r.grid.codes == exact[r.id]).sum(axis=1) for r in first) / sum(r.grid.num_frames for r in first)
    assert agreement["files"] == 2 and len(agreement["per_level_equal"]) == 32
    assert agreement["tokens_equal"] == round(float(per_level.mean()), 6)
    assert agreement["per_level_equal"] == [round(float(v), 6) for v in per_level]
    assert agreement["reference"] == "torch float32 on cpu, one file per call"
    assert agreement["see"].startswith("mimistack precision CLIPS")  # the manifest points to the report
    assert agreement["tokens_equal"] < 1.0, "bfloat16 rounds: some tokens differ from float32 on random weights"
    again = tokenize_corpus(audio_dir, out, tiny_checkpoint, threads=1, dtype="bfloat16")
    assert again.files_processed == 0 and again.manifest["precision"] == precision
    # Codes of another precision must not join the folder (the plan records engine, dtype and fast path).
    with pytest.raises(CorpusError, match=r"computed with engine=torch, dtype=bfloat16, fast=False, not .*float32"):
        tokenize_corpus(audio_dir, out, tiny_checkpoint, threads=1)


def test_parallel_encoders_write_what_one_codec_on_one_thread_writes(
    audio_dir: Path, tiny_checkpoint: Path, tokenized: Path, tmp_path: Path, torch_threads: None
) -> None:
    """`encoders=2`: two codecs on one torch thread each, in two threads, each decoding and encoding whole files.
    The same shard files, row for row, as one codec on one thread (the `tokenized` run), handed over in plan
    order; no encode thread is left behind; torch's thread count is restored."""
    torch.set_num_threads(2)
    out = tmp_path / "parallel"
    result = tokenize_corpus(audio_dir, out, tiny_checkpoint, encoders=2, files_per_shard=2)
    assert torch.get_num_threads() == 2
    assert (result.rows_written, result.errors) == (3, 3)
    names = sorted(p.name for p in (tokenized / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == names
    for name in names:
        assert pq.read_table(out / "shards" / name).equals(pq.read_table(tokenized / "shards" / name)), name
    assert (out / "errors.jsonl").read_text() == (tokenized / "errors.jsonl").read_text()
    assert not [t for t in threading.enumerate() if t.name.startswith("mimistack-encode")]
