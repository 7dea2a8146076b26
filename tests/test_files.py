"""The one atomic writer (`mimistack._files`): files get the mode `open()` would give under the umask, nothing is
half-written or clobbered, and every output of the package goes through it."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mimistack import _files
from mimistack.audio import save_audio
from mimistack.cli import main
from mimistack.tokens import TokenGrid

SRC = Path(__file__).resolve().parents[1] / "src" / "mimistack"


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["umask022", "umask077", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_open_mode(folder: Path) -> int:
    """What `open(path, "w")` gives a new file now: the reference every writer must match."""
    probe = folder / "probe-by-open"
    probe.write_text("x")
    try:
        return mode(probe)
    finally:
        probe.unlink()


def grid() -> TokenGrid:
    codes = np.random.default_rng(0).integers(0, 2048, size=(32, 13)).astype(np.uint16)
    return TokenGrid(
        codes=codes,
        num_samples=13 * 1920 - 100,
        sample_rate=24_000,
        frame_rate=12.5,
        codebook_size=2048,
        weights_sha256="ab" * 32,
    )


def test_every_writer_gives_the_mode_open_would(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    assert plain_open_mode(tmp_path) == expected == _files.output_mode()
    _files.write_text(tmp_path / "a.txt", "hello")
    with _files.atomic_write(tmp_path / "b.bin") as handle:
        handle.write(b"\x00\x01")
    with _files.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"by name")
    save_audio(tmp_path / "d.wav", np.zeros(2400, dtype=np.float32))
    save_audio(tmp_path / "d.flac", np.zeros(2400, dtype=np.float32))
    grid().save(tmp_path / "e.mimi")
    for name in ("a.txt", "b.bin", "c.bin", "d.wav", "d.flac", "e.mimi"):
        assert mode(tmp_path / name) == expected, f"{name}: {oct(mode(tmp_path / name))} != {oct(expected)}"
    with _files.staging_dir(tmp_path / "folder") as staging:
        (staging / "inner").mkdir()
        (staging / "inner" / "f.json").write_text("{}")
        (staging / "g.bin").write_bytes(b"x")
        _files.publish_dir(staging, tmp_path / "folder")
    assert mode(tmp_path / "folder" / "g.bin") == expected
    assert mode(tmp_path / "folder" / "inner" / "f.json") == expected
    assert mode(tmp_path / "folder") == 0o777 & ~umask
    assert not [p for p in tmp_path.iterdir() if _files.TMP_MARK in p.name], "no temporary file is left behind"


def test_cli_outputs_follow_the_umask(
    tmp_path: Path, umask: int, tiny_checkpoint: Path, speech: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    weights = ["--weights", str(tiny_checkpoint), "-q", "--engine", "torch"]
    assert main(["encode", str(speech[0]), "-o", str(tmp_path / "x.mimi"), *weights]) == 0
    assert main(["decode", str(tmp_path / "x.mimi"), "-o", str(tmp_path / "x.wav"), "--levels", "0-7", *weights]) == 0
    assert main(["demo", str(speech[0]), "-o", str(tmp_path / "demo"), *weights]) == 0
    capsys.readouterr()
    for path in [tmp_path / "x.mimi", tmp_path / "x.wav", *(tmp_path / "demo").iterdir()]:
        assert mode(path) == 0o666 & ~umask, f"{path.name}: {oct(mode(path))}"


def test_a_failed_write_leaves_nothing_and_an_existing_file_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), _files.atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("the writer failed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    _files.write_bytes(target, b"first")
    with pytest.raises(FileExistsError, match="--force"):
        _files.write_bytes(target, b"second")
    assert target.read_bytes() == b"first"
    _files.write_bytes(target, b"second", force=True)
    assert target.read_bytes() == b"second"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _files.write_bytes(tmp_path / "missing" / "x.bin", b"x")


def test_the_cache_root_is_one_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIMISTACK_CACHE", str(tmp_path))
    assert _files.cache_dir() == tmp_path
    monkeypatch.setenv("MIMISTACK_CACHE", "")  # empty means unset, everywhere
    assert _files.cache_dir() == Path.home() / ".cache" / "mimistack"
    from mimistack.engine.onnx_cache import cache_root

    assert cache_root() == _files.cache_dir() / "onnx"


def test_no_module_writes_files_around_the_one_writer() -> None:
    """Temporary files and renames belong to `_files` alone: any other use is a second writer to fold into it."""
    pattern = re.compile(r"\b(mkstemp|NamedTemporaryFile|os\.replace|os\.rename|\.chmod\()")
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_files.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
