from __future__ import annotations

import numpy as np
import pytest

from mimistack.levels import Levels, LevelsError, format_levels, latent_from_codes, quantize
from mimistack.weights import codebook_tables, load_weights


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("0-7", tuple(range(8)), id="range"),
        pytest.param("0,3,9", (0, 3, 9), id="list"),
        pytest.param(" 5 - 6 , 1 ", (1, 5, 6), id="spaces"),
        pytest.param("all", tuple(range(32)), id="all"),
        pytest.param("none", (), id="none"),
        pytest.param("semantic", (0,), id="semantic"),
        pytest.param("acoustic", tuple(range(1, 32)), id="acoustic"),
        pytest.param(8, tuple(range(8)), id="int-prefix"),
        pytest.param([3, 1, 3], (1, 3), id="iterable"),
        pytest.param(None, tuple(range(32)), id="default-all"),
    ],
)
def test_parse(spec: object, expected: tuple[int, ...]) -> None:
    assert Levels.parse(spec).indices == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["0-40", "7-3", "a,b", "", 33, [0.5], True, "-1"])
def test_parse_errors(spec: object) -> None:
    with pytest.raises(LevelsError):
        Levels.parse(spec)  # type: ignore[arg-type]


def test_views() -> None:
    assert Levels.parse("0-7").is_prefix
    assert not Levels.parse("0,2").is_prefix
    assert Levels.parse("0,2").mask.tolist()[:3] == [1.0, 0.0, 1.0]
    assert format_levels([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert str(Levels.parse("none")) == "none"


@pytest.fixture(scope="module")
def tables(tiny_checkpoint):
    weights = load_weights(tiny_checkpoint)
    return codebook_tables(weights.tensors, weights.config)


def test_latent_is_a_sum_of_level_terms(tables) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, tables.codebook_size, size=(2, tables.num_levels, 5))
    # Every level's contribution to the latent, precomputed: [num_levels, codebook_size, dimension].
    semantic = np.einsum("kcd,ed->kce", tables.semantic_codebooks, tables.semantic_output_proj)
    acoustic = np.einsum("kcd,ed->kce", tables.acoustic_codebooks, tables.acoustic_output_proj)
    terms = np.concatenate([semantic, acoustic], axis=0)
    for spec in ("0", "0-7", "0,3,9", "5", "all", "none"):
        levels = Levels.parse(spec)
        expected = np.zeros((2, tables.dimension, 5), dtype=np.float32)
        for level in levels:
            expected += terms[level][codes[:, level]].transpose(0, 2, 1)
        np.testing.assert_allclose(latent_from_codes(tables, codes, levels), expected, atol=1e-5)


def test_dropping_a_level_is_not_zeroing_it(tables) -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(1, tables.codebook_size, size=(tables.num_levels, 4))
    dropped = latent_from_codes(tables, codes, "0,2-31")
    zeroed_codes = codes.copy()
    zeroed_codes[1] = 0
    zeroed = latent_from_codes(tables, zeroed_codes, "all")
    assert not np.allclose(dropped, zeroed)
    # Unselected rows are ignored entirely: garbage there changes nothing.
    scrambled = codes.copy()
    scrambled[1] = rng.integers(0, tables.codebook_size, size=4)
    np.testing.assert_array_equal(latent_from_codes(tables, scrambled, "0,2-31"), dropped)


def test_out_of_range_tokens_are_refused(tables) -> None:
    codes = np.zeros((tables.num_levels, 2), dtype=np.int64)
    codes[4, 1] = tables.codebook_size
    with pytest.raises(ValueError, match="level 4"):
        latent_from_codes(tables, codes, "all")


def test_numpy_quantizer_matches_torch(tiny_checkpoint, tables) -> None:
    torch = pytest.importorskip("torch")
    from mimistack.torch.mimi import MimiModel

    weights = load_weights(tiny_checkpoint)
    model = MimiModel(weights.config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
    latent = np.random.default_rng(2).standard_normal((2, weights.config.dimension, 9)).astype(np.float32)
    with torch.no_grad():
        expected = model.quantizer.encode(torch.from_numpy(latent)).numpy()
        np.testing.assert_allclose(
            latent_from_codes(tables, expected, "all"),
            model.latent_from_codes(torch.from_numpy(expected)).numpy(),
            atol=1e-5,
        )
    agreement = (quantize(tables, latent) == expected).mean()
    assert agreement > 0.99
