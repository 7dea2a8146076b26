"""The one place tests, benchmarks and scripts find speech: the clips in `tests/data/speech/` (see its README).

Tests get them through the `speech` fixture of `conftest.py`; benchmarks and scripts import this module by path
(`sys.path.insert(0, "<repo>/tests")`). Nothing reads speech from outside the repository.
"""

from __future__ import annotations

from pathlib import Path

SPEECH_DIR = Path(__file__).resolve().parent / "data" / "speech"


def speech_files() -> list[Path]:
    """The test clips, sorted by name (24 kHz mono WAV). A missing folder is a broken checkout: it raises."""
    files = sorted(SPEECH_DIR.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no speech clips in {SPEECH_DIR}: the checkout is incomplete (see tests/data/speech)")
    return files


def speech_file(name: str) -> Path:
    """One clip by stem, e.g. `speech_file("flite_awb")`."""
    path = SPEECH_DIR / f"{name}.wav"
    if not path.is_file():
        raise FileNotFoundError(f"speech clip {path} is missing: the checkout is incomplete")
    return path
