"""The formats people already have, in and out of `tokenize-corpus`: WebDataset tar shards and Hugging Face
`datasets`-style Parquet/Arrow audio tables (made here with the real `datasets` package) as inputs, and the output
shards loaded with `datasets.load_dataset("parquet", ...)`, polars and DuckDB as they are.

Every run uses the local runner on one torch thread; reference codes are `Codec.encode(load_audio(file))` of the
original files on one thread, so audio read from inside a container must decode to exactly the file's samples.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402 - after the importorskip that names the extra

from corpus_checks import GOOD  # noqa: E402
from mimistack import corpus  # noqa: E402
from mimistack.audio import load_audio  # noqa: E402
from mimistack.cli import main  # noqa: E402
from mimistack.codec import Codec  # noqa: E402
from mimistack.corpus import CorpusError, collect_inputs, tokenize_corpus  # noqa: E402
from mimistack.engine.options import TorchOptions  # noqa: E402

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, speech: list[Path]) -> dict[str, Path]:
    """Three speech files as they would sit in a dataset: WAV, WAV, and FLAC at 16 kHz."""
    folder = tmp_path_factory.mktemp("originals")
    by_name = {p.name: p for p in speech}
    out = {"s0": folder / "s0.wav", "s1": folder / "s1.wav", "s2": folder / "s2.flac"}
    out["s0"].write_bytes(by_name[GOOD[0]].read_bytes())
    out["s1"].write_bytes(by_name[GOOD[1]].read_bytes())
    pcm, rate = soundfile.read(by_name[GOOD[2]], dtype="float32")
    soundfile.write(out["s2"], soxr.resample(pcm, rate, 16_000), 16_000)
    return out


@pytest.fixture(scope="module")
def reference(files: dict[str, Path], tiny_checkpoint: Path) -> dict[str, np.ndarray]:
    """id -> codes of a plain single-process encode of the original file, on one torch thread."""
    before = torch.get_num_threads()
    try:
        codec = Codec.load(tiny_checkpoint, TorchOptions(num_threads=1))
        return {key: codec.encode(load_audio(path)).codes for key, path in files.items()}
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tokenize(inputs: object, out: Path, checkpoint: Path, **options: object) -> corpus.TokenizeResult:
    return tokenize_corpus(inputs, out, checkpoint, threads=1, **options)  # type: ignore[arg-type]


def codes_by_id(out: Path) -> dict[str, np.ndarray]:
    found = [(r.id, r.grid.codes) for r in corpus.open(out)]
    assert len({key for key, _ in found}) == len(found), "an id twice"
    return dict(found)


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            add_member(archive, name, data)
    return path


# -- WebDataset ---------------------------------------------------------------------------------------------
def test_webdataset_shards_are_inputs(
    files: dict[str, Path], reference: dict[str, np.ndarray], tiny_checkpoint: Path, tmp_path: Path, one_thread: None
) -> None:
    """Two WebDataset shards (audio with .json/.txt sidecars, a sample in a sub-folder, a corrupt audio member)
    through a glob: one row per audio sample with the codes of the original file, sidecars ignored, the corrupt
    member in the errors table under its source, and a source_path that fsspec opens."""
    shards = tmp_path / "shards"
    shards.mkdir()
    first = write_shard(
        shards / "shard-000000.tar",
        {
            "s0.wav": files["s0"].read_bytes(),
            "s0.json": json.dumps({"text": "hello"}).encode(),
            "part/s2.flac": files["s2"].read_bytes(),
            "part/s2.txt": b"a transcript",
        },
    )
    write_shard(
        shards / "shard-000001.tar",
        {"s1.wav": files["s1"].read_bytes(), "s1.cls": b"3", "bad.wav": b"not audio at all" * 64},
    )
    inputs = collect_inputs(str(shards / "*.tar"))
    assert [i.id for i in inputs] == ["s0", "part/s2", "s1", "bad"]
    assert inputs[1].path == f"tar://part/s2.flac::{first}"

    out = tmp_path / "tokens"
    result = tokenize(str(shards / "*.tar"), out, tiny_checkpoint, files_per_shard=2)
    assert (result.rows_written, result.errors) == (3, 1)
    got = codes_by_id(out)
    expected = {"s0": reference["s0"], "part/s2": reference["s2"], "s1": reference["s1"]}
    assert sorted(got) == sorted(expected)
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, expected[key], err_msg=key)
    [error] = corpus.open(out).errors()
    assert error["id"] == "bad" and error["path"] == f"tar://bad.wav::{shards / 'shard-000001.tar'}"
    assert error["path"] in error["reason"] and "not a readable audio file" in error["reason"]
    record = next(r for r in corpus.open(out) if r.id == "part/s2")
    assert record.source_path == inputs[1].path
    fsspec = pytest.importorskip("fsspec")
    with fsspec.open(record.source_path, "rb") as handle:
        assert handle.read() == files["s2"].read_bytes(), "source_path is fsspec's chained URL of the member"
    assert not list(Path(shards).glob("**/*.tmp-*")), "decoding leaves nothing behind"

    # A rerun over the same shards does nothing: the plan holds the members' sources.
    again = tokenize(str(shards / "*.tar"), out, tiny_checkpoint)
    assert (again.files_skipped, again.files_processed) == (4, 0)


def test_webdataset_refusals(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sample with two audio members, a compressed shard and a broken tar are refused before any work, naming
    the problem (and, on the command line, with exit status 2)."""
    two = write_shard(tmp_path / "two.tar", {"x.left.wav": b"a", "x.right.wav": b"b"})
    with pytest.raises(CorpusError, match=r"more than one audio member, e.g. 'x': x.left.wav, x.right.wav"):
        collect_inputs(two)
    packed = tmp_path / "packed.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        add_member(archive, "s0.wav", files["s0"].read_bytes())
    with pytest.raises(CorpusError, match="gzip tar; WebDataset shards are read by offset"):
        collect_inputs(packed)
    (tmp_path / "broken.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CorpusError, match=r"broken\.tar: not a readable tar file"):
        collect_inputs(tmp_path / "broken.tar")
    code = main(["tokenize-corpus", str(packed), "-o", str(tmp_path / "out"), "--weights", "random-tiny", "-q"])
    assert code == 2
    assert "decompress it first" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "refused before the output folder is made"


# -- Hugging Face datasets ----------------------------------------------------------------------------------
def test_datasets_parquet_and_arrow_tables_are_inputs(
    files: dict[str, Path], reference: dict[str, np.ndarray], tiny_checkpoint: Path, tmp_path: Path, one_thread: None
) -> None:
    """Tables written by the real `datasets` package: `to_parquet` with embedded audio bytes and an `id` column,
    one without ids (ids from the audio's path), and a `save_to_disk` folder (Arrow stream files), whose rows
    reference a local file by path without bytes, as `datasets` stores local files. Every row is tokenized once
    with the codes of the original file."""
    datasets = pytest.importorskip("datasets")
    audio = datasets.Audio(decode=False)
    embedded = [{"bytes": files[k].read_bytes(), "path": files[k].name} for k in ("s0", "s1")]
    with_ids = datasets.Dataset.from_dict({"id": ["x/s0", "x/s1"], "audio": embedded, "text": ["a", "b"]})
    with_ids.cast_column("audio", audio).to_parquet(str(tmp_path / "train-00000.parquet"))
    no_ids = datasets.Dataset.from_dict({"audio": [{"bytes": files["s2"].read_bytes(), "path": "clips/s2.flac"}]})
    no_ids.cast_column("audio", audio).to_parquet(str(tmp_path / "train-00001.parquet"))
    by_path = datasets.Dataset.from_dict({"id": ["y/s2"], "audio": [str(files["s2"])]}).cast_column("audio", audio)
    by_path.save_to_disk(str(tmp_path / "saved"))
    assert pq.read_schema(tmp_path / "train-00000.parquet").field("audio").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )

    inputs = collect_inputs([str(tmp_path / "train-*.parquet"), tmp_path / "saved"])
    assert [i.id for i in inputs] == ["x/s0", "x/s1", "clips/s2", "y/s2"]
    assert inputs[1].path == f"parquet://audio/1::{tmp_path / 'train-00000.parquet'}"
    assert inputs[3].path.startswith("arrow://audio/0::") and inputs[3].path.endswith(".arrow")

    out = tmp_path / "tokens"
    result = tokenize([str(tmp_path / "train-*.parquet"), tmp_path / "saved"], out, tiny_checkpoint)
    assert (result.rows_written, result.errors) == (4, 0)
    expected = {"x/s0": reference["s0"], "x/s1": reference["s1"], "clips/s2": reference["s2"], "y/s2": reference["s2"]}
    got = codes_by_id(out)
    assert sorted(got) == sorted(expected)
    for key, codes in got.items():
        np.testing.assert_array_equal(codes, expected[key], err_msg=key)


def test_table_rows_without_audio_are_error_rows_and_odd_tables_are_refused(
    files: dict[str, Path], reference: dict[str, np.ndarray], tiny_checkpoint: Path, tmp_path: Path, one_thread: None
) -> None:
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [
        {"bytes": files["s0"].read_bytes(), "path": "s0.wav"},
        {"bytes": None, "path": "gone.wav"},
        None,
        {"bytes": b"junk" * 100, "path": "junk.wav"},
    ]
    table = pa.table({"id": ["ok", "gone", "null", "junk"], "audio": pa.array(rows, struct)})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)
    out = tmp_path / "tokens"
    result = tokenize(tmp_path / "t.parquet", out, tiny_checkpoint)
    assert (result.rows_written, result.errors) == (1, 3)
    np.testing.assert_array_equal(codes_by_id(out)["ok"], reference["s0"])
    reasons = {e["id"]: e["reason"] for e in corpus.open(out).errors()}
    assert "no audio bytes, and its path 'gone.wav' is not a file" in reasons["gone"]
    assert "the row's audio is null" in reasons["null"]
    assert "not a readable audio file" in reasons["junk"] and "parquet://audio/3::" in reasons["junk"]

    two = pa.table({"a": pa.array(rows[:1], struct), "b": pa.array(rows[:1], struct)})
    pq.write_table(two, tmp_path / "two.parquet")
    with pytest.raises(CorpusError, match=r"2 audio columns \(a, b\)"):
        collect_inputs(tmp_path / "two.parquet")
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "text.parquet")
    with pytest.raises(CorpusError, match=r"neither a manifest .* nor an audio table"):
        collect_inputs(tmp_path / "text.parquet")
    with pa.OSFile(str(tmp_path / "text.arrow"), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("t", pa.string())])):
        pass
    with pytest.raises(CorpusError, match=r"text\.arrow: no audio column"):
        collect_inputs(tmp_path / "text.arrow")


# -- the output, read by other tools ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenized(files: dict[str, Path], tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "tokens"
    before = torch.get_num_threads()
    try:
        tokenize(list(files.values()), out, tiny_checkpoint, files_per_shard=2)
    finally:
        torch.set_num_threads(before)
    return out


def test_output_loads_with_datasets(tokenized: Path, reference: dict[str, np.ndarray], tmp_path: Path) -> None:
    """`datasets.load_dataset("parquet", data_files=...)` on the shards as written: every row, `codes` typed as
    T frames of 32 uint16, equal to the reference after a transpose."""
    datasets = pytest.importorskip("datasets")
    shards = sorted(str(p) for p in (tokenized / "shards").glob("part-*.parquet"))
    assert len(shards) == 2
    loaded = datasets.load_dataset("parquet", data_files=shards, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 3
    assert loaded.features["codes"] == datasets.List(datasets.List(datasets.Value("uint16"), length=32))
    assert loaded.features["num_frames"] == datasets.Value("int32")
    for row in loaded:
        codes = np.asarray(row["codes"], dtype=np.uint16).T
        assert codes.shape == (32, row["num_frames"])
        np.testing.assert_array_equal(codes, reference[row["id"]], err_msg=row["id"])
    arrays = loaded.with_format("numpy")
    np.testing.assert_array_equal(arrays[0]["codes"].T, reference[loaded[0]["id"]])


def test_output_loads_with_polars_and_duckdb(tokenized: Path, reference: dict[str, np.ndarray]) -> None:
    pattern = str(tokenized / "shards" / "*.parquet")
    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(pattern)
    assert frame.schema["codes"] == polars.List(polars.Array(polars.UInt16, 32))
    for identifier, codes in zip(frame["id"], frame["codes"]):
        np.testing.assert_array_equal(codes.to_numpy().T, reference[identifier], err_msg=identifier)
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"select id, num_frames, len(codes), codes[1] from read_parquet('{pattern}') order by id")
    for identifier, frames, length, first in rows.fetchall():
        assert frames == length == reference[identifier].shape[1]
        assert first == reference[identifier][:, 0].tolist()
