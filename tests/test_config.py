from __future__ import annotations

import dataclasses

import pytest

from mimistack.config import FRAME_SIZE, ConfigError, MimiConfig


def test_official_derived_sizes() -> None:
    cfg = MimiConfig.official()
    assert cfg.hop_length == 960
    assert cfg.frame_size == FRAME_SIZE == 1920
    assert cfg.frame_rate == 12.5
    assert cfg.bitrate(1) == pytest.approx(137.5)
    assert cfg.bitrate(8) == pytest.approx(1100.0)
    assert cfg.bitrate(32) == pytest.approx(4400.0)
    assert cfg.num_acoustic == 31
    assert cfg.is_official


def test_tiny_keeps_frame_structure() -> None:
    tiny = MimiConfig.tiny()
    assert tiny.frame_size == 1920 and tiny.num_levels == 32
    assert not tiny.is_official


def test_frozen_and_round_trips() -> None:
    cfg = MimiConfig.tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dimension = 3  # type: ignore[misc]
    assert MimiConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"dimension": 30, "num_heads": 4}, "divisible", id="heads"),
        pytest.param({"num_semantic": 32}, "acoustic", id="semantic"),
        pytest.param({"codebook_size": 70000}, "uint16", id="codebook"),
        pytest.param({"ratios": ()}, "ratios", id="ratios"),
        pytest.param({"context": 0}, "context", id="context"),
    ],
)
def test_invalid_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MimiConfig(**changes)


def test_unknown_fields_and_names() -> None:
    with pytest.raises(ConfigError, match="unknown MimiConfig fields: bogus"):
        MimiConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="unknown config name"):
        MimiConfig.named("huge")
