"""What the corpus tests of both runners share (tests/test_corpus.py runs Ray, tests/test_corpus_local.py the
in-process runner): the test folder of audio, the shard columns, and the checks that must hold whatever ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import soxr

from mimistack import corpus
from mimistack.corpus import tokenize_corpus

GOOD = (
    "real_sense_and_sensibility_01_austen_64kb-0880.wav",
    "real_sense_and_sensibility_01_austen_64kb-0890.wav",
    "flite_awb.wav",
)
COLUMNS = [
    "id",
    "source_path",
    "duration_s",
    "num_samples",
    "num_frames",
    "codes",
    "weights_sha256",
    "mimistack_version",
]


def write_audio_dir(folder: Path, speech: list[Path]) -> Path:
    """Three speech files (one as 16 kHz FLAC in a subfolder), plus a corrupt WAV, an empty WAV, a text file with an
    audio suffix and a .txt file that a folder scan must ignore."""
    by_name = {p.name: p for p in speech}
    (folder / "a.wav").write_bytes(by_name[GOOD[0]].read_bytes())
    (folder / "b.wav").write_bytes(by_name[GOOD[1]].read_bytes())
    (folder / "sub").mkdir()
    pcm, rate = soundfile.read(by_name[GOOD[2]], dtype="float32")
    soundfile.write(folder / "sub" / "c.flac", soxr.resample(pcm, rate, 16_000), 16_000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    soundfile.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), 24_000)
    (folder / "notes.mp3").write_text("this is text, not audio\n" * 20)
    (folder / "readme.txt").write_text("not an audio suffix: a folder scan skips this file\n")
    return folder


def check_errors_table(tokenized: Path) -> None:
    """The corrupt, empty and non-audio files are in the errors table with their reasons (readme.txt never is)."""
    errors = {e["id"]: e for e in map(json.loads, (tokenized / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"corrupt", "empty", "notes"}, "readme.txt is not an audio file: never picked up"
    assert "not a readable audio file" in errors["corrupt"]["reason"]
    assert "no audio samples" in errors["empty"]["reason"]
    assert "not a readable audio file" in errors["notes"]["reason"]
    assert errors["notes"]["path"].endswith("notes.mp3")
    assert {e["id"] for e in corpus.open(tokenized).errors()} == set(errors)


def check_rerun_skips_everything(tokenized: Path, audio_dir: Path, checkpoint: Path, runner: str) -> None:
    """A second run over a finished folder plans the same files, skips them all and rewrites nothing."""
    before = {p.name: p.stat().st_mtime_ns for p in (tokenized / "shards").iterdir()}
    result = tokenize_corpus(audio_dir, tokenized, checkpoint, runner=runner)
    assert (result.files_planned, result.files_skipped, result.files_processed) == (6, 6, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (tokenized / "shards").iterdir()} == before
    assert result.manifest["complete"] is True
