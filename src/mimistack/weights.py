"""Weights: find a checkpoint (local file or Hugging Face hub id), read it safely, map its keys.

Sits on `config`; used by the engines (`engine/`), `testing` and the CLI. Torch-free: tensors are read as numpy.

Two key layouts exist for the same weights:
- **kyutai**: Kyutai's original names (`tokenizer-e351c8d8-checkpoint125.safetensors`, 318 tensors), e.g.
  `encoder.model.0.conv.conv.weight`, `...self_attn.in_proj_weight`, `quantizer.rvq_first.vq.layers.0._codebook.
  embedding_sum`. This is the layout of `mimistack.torch.MimiModel`.
- **transformers**: Hugging Face's names (`kyutai/mimi` `model.safetensors`), e.g. `encoder.layers.0.conv.weight`,
  separate `q_proj`/`k_proj`/`v_proj` whose q and k rows are permuted for rotate-half RoPE.

Only safetensors are read: a pickle checkpoint can run code when loaded, so it is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from .config import MimiConfig
from .errors import MimistackError
from .levels import CodebookTables

logger = logging.getLogger(__name__)

Layout = Literal["kyutai", "transformers"]

DEFAULT_REPO = "kyutai/mimi"
HUB_FILENAMES = ("model.safetensors", "tokenizer-e351c8d8-checkpoint125.safetensors")
CONFIG_METADATA_KEY = "mimistack_config"
NOTE_METADATA_KEY = "mimistack_note"
RANDOM_NOTE = "random weights"
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
_HUB_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(.+\.safetensors))?(?:@([\w./-]+))?$")


class WeightsError(MimistackError, ValueError):
    """Weights that cannot be found, read or matched to the model."""


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """A checkpoint read into memory, in the kyutai layout.

    `tensors`: name -> float32 numpy array. `source`: what the user asked for; `path`: the file read.
    """

    tensors: dict[str, np.ndarray]
    config: MimiConfig
    layout: Layout
    sha256: str
    path: Path
    source: str


@dataclasses.dataclass(frozen=True)
class WeightsRef:
    """A checkpoint resolved once: what the user asked for (`source`), the file (`path`), its `sha256` (the
    provenance every token grid, export and corpus row carries), its `config`, and whether it holds random test
    weights (`is_random`, from the note `write_random_checkpoint` leaves in the file's metadata). Reading the
    tensors is a separate step (`load_weights(ref)`); this only reads the file's header and hashes it."""

    source: str
    path: Path
    sha256: str
    config: MimiConfig
    is_random: bool
    revision: str | None = None

    @classmethod
    def resolve(cls, source: str | os.PathLike[str] | WeightsRef, revision: str | None = None) -> WeightsRef:
        if isinstance(source, WeightsRef):
            return source
        path = resolve_weights(source, revision)
        _refuse_pickle(path)
        metadata = read_metadata(path)
        config = (
            MimiConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
            if CONFIG_METADATA_KEY in metadata
            else MimiConfig.official()
        )
        return cls(
            source=os.fspath(source),
            path=path,
            sha256=file_sha256(path),
            config=config,
            is_random=RANDOM_NOTE in metadata.get(NOTE_METADATA_KEY, ""),
            revision=revision,
        )


# -- finding the file ---------------------------------------------------------------------------------------
def resolve_weights(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local file path for `source`: an existing path, or a hub id (`kyutai/mimi`, `owner/repo/file.safetensors`,
    `hf://owner/repo`, optional `@revision`), downloaded into (or found in) the Hugging Face cache."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            for name in HUB_FILENAMES:
                if (path / name).is_file():
                    return path / name
            raise WeightsError(f"{path} is a folder without {' or '.join(HUB_FILENAMES)}")
        return path
    match = _HUB_ID.match(text)
    if match is None or text.startswith((".", "/", "~")) or text.endswith(tuple(_PICKLE_SUFFIXES)):
        raise WeightsError(
            f"weights not found: {text!r} is neither an existing file nor a hub id like '{DEFAULT_REPO}'"
        )
    repo, filename, rev = match.group(1), match.group(2), match.group(3) or revision
    return _download(repo, filename, rev)


def _download(repo: str, filename: str | None, revision: str | None) -> Path:
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError as error:  # pragma: no cover - a core dependency
        raise WeightsError("huggingface_hub is needed for hub ids: pip install huggingface_hub") from error
    names = (filename,) if filename else HUB_FILENAMES
    for name in names:  # the cache first: no network at all when the weights are already here
        try:
            found = Path(hf_hub_download(repo, name, revision=revision, local_files_only=True))
        except Exception:
            continue
        logger.info("weights %s/%s%s from the local cache", repo, name, f"@{revision}" if revision else "")
        return found
    if _offline():
        raise _not_available(repo, filename, revision, "HF_HUB_OFFLINE is set", constants.HF_HUB_CACHE)
    unreachable = _hub_unreachable(constants.ENDPOINT)
    if unreachable:
        raise _not_available(repo, filename, revision, unreachable, constants.HF_HUB_CACHE)
    errors: list[str] = []
    for name in names:  # the network is there: huggingface_hub's own retries and messages apply
        try:
            found = Path(hf_hub_download(repo, name, revision=revision))
            logger.info("weights %s/%s%s from the hub", repo, name, f"@{revision}" if revision else "")
            return found
        except Exception as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
            if not _is_missing_file(error):
                break  # the hub refused or failed: trying other file names would only wait again
    raise _not_available(repo, filename, revision, "; ".join(errors), constants.HF_HUB_CACHE)


def _not_available(repo: str, filename: str | None, revision: str | None, reason: str, cache: str) -> WeightsError:
    wanted = filename or HUB_FILENAMES[0]
    at = f" --revision {revision}" if revision else ""
    return WeightsError(
        f"the weights {repo!r}{f' at revision {revision}' if revision else ''} are not in the Hugging Face cache "
        f"({cache}) and cannot be downloaded here ({reason}).\n"
        f"  - on a machine with network access run:  hf download {repo} {wanted}{at}\n"
        f"    then copy its cache folder to {cache} on this machine (or set HF_HOME), or pass the file itself: "
        f"--weights /path/to/{wanted}\n"
        f"  - to try the pipeline without the real weights: --weights random (meaningless audio)"
    )


def _hub_unreachable(endpoint: str, timeout: float = 1.5) -> str:
    """Why the hub at `endpoint` cannot be reached within `timeout` seconds ("" when a TCP connection opens).

    Asked before any download, so that a machine without network fails in a second or two with one message,
    instead of after huggingface_hub's retries. A configured HTTPS proxy is probed instead of the hub itself."""
    import socket
    import urllib.parse

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = urllib.parse.urlsplit(proxy if proxy and "://" in proxy else endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError as error:
        what = "the proxy" if proxy else url.netloc
        return f"no connection to {what}: {error.strerror or type(error).__name__}"


def _is_missing_file(error: Exception) -> bool:
    """True when the hub answered that this file is not in the repository (another name may be)."""
    return type(error).__name__ in ("EntryNotFoundError", "RemoteEntryNotFoundError")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


# -- reading the file ---------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(8)
    looks_pickled = head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    if path.suffix.lower() in _PICKLE_SUFFIXES or looks_pickled:
        raise WeightsError(
            f"refusing to load {path}: it is a pickle (torch.save) checkpoint, and loading a pickle can run "
            "arbitrary code. Use the safetensors file (kyutai/mimi ships model.safetensors), or convert it on a "
            "trusted machine: `from safetensors.torch import save_file; save_file(torch.load(p)['model'], "
            "'mimi.safetensors')`."
        )


def read_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file, without reading its tensors."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors as float32 numpy arrays (bf16/fp16 upcast), plus the file's metadata."""
    _refuse_pickle(path)
    try:
        from safetensors import safe_open
    except ImportError as error:  # pragma: no cover - a core dependency
        raise WeightsError("safetensors is required: pip install safetensors") from error
    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = np.asarray(handle.get_tensor(key), dtype=np.float32)
    except WeightsError:
        raise
    except Exception as error:
        if "bf16" in str(error).lower() or "bfloat16" in str(error).lower():
            return _read_raw(path)
        raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, metadata


_RAW_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def _read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file by its published layout (8-byte little-endian header length, JSON header, data),
    for dtypes numpy cannot name: bfloat16 is the top half of a float32, so it is widened by a 16-bit shift.
    No torch needed."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        data = handle.read()
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        kind = _RAW_DTYPES.get(entry["dtype"])
        if kind is None:
            raise WeightsError(f"{path}: tensor {name} has dtype {entry['dtype']}, which mimistack does not read")
        start, stop = entry["data_offsets"]
        raw = np.frombuffer(data[start:stop], dtype=np.dtype(kind))
        if entry["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float32).reshape(entry["shape"])
    return tensors, metadata


# -- layouts ------------------------------------------------------------------------------------------------
def expected_shapes(config: MimiConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the kyutai layout for `config`, with its shape (318 for the official config)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(
        name: str, cin: int, cout: int, kernel: int, bias: bool = True, transposed: bool = False, groups: int = 1
    ) -> None:
        shapes[f"{name}.weight"] = (cin, cout // groups, kernel) if transposed else (cout, cin // groups, kernel)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    nf, ratios, dim = config.n_filters, config.ratios, config.dimension
    k, rk, lk, comp = config.kernel_size, config.residual_kernel_size, config.last_kernel_size, config.compress

    def resblock(prefix: str, channels: int) -> None:
        conv(f"{prefix}.block.1.conv.conv", channels, channels // comp, rk)
        conv(f"{prefix}.block.3.conv.conv", channels // comp, channels, 1)

    conv("encoder.model.0.conv.conv", 1, nf, k)
    index, mult = 1, 1
    for ratio in reversed(ratios):
        resblock(f"encoder.model.{index}", mult * nf)
        conv(f"encoder.model.{index + 2}.conv.conv", mult * nf, mult * nf * 2, 2 * ratio)
        index, mult = index + 3, mult * 2
    conv(f"encoder.model.{index + 1}.conv.conv", mult * nf, dim, lk)

    conv("decoder.model.0.conv.conv", dim, mult * nf, k)
    index = 1
    for ratio in ratios:
        conv(f"decoder.model.{index + 1}.convtr.convtr", mult * nf, mult * nf // 2, 2 * ratio, transposed=True)
        resblock(f"decoder.model.{index + 2}", mult * nf // 2)
        index, mult = index + 3, mult // 2
    conv(f"decoder.model.{index + 1}.conv.conv", nf, 1, lk)

    for side in ("encoder_transformer", "decoder_transformer"):
        for layer in range(config.num_layers):
            p = f"{side}.transformer.layers.{layer}"
            shapes[f"{p}.self_attn.in_proj_weight"] = (3 * dim, dim)
            shapes[f"{p}.self_attn.out_proj.weight"] = (dim, dim)
            for norm in ("norm1", "norm2"):
                shapes[f"{p}.{norm}.weight"] = (dim,)
                shapes[f"{p}.{norm}.bias"] = (dim,)
            shapes[f"{p}.linear1.weight"] = (config.dim_feedforward, dim)
            shapes[f"{p}.linear2.weight"] = (dim, config.dim_feedforward)
            shapes[f"{p}.layer_scale_1.scale"] = (dim,)
            shapes[f"{p}.layer_scale_2.scale"] = (dim,)

    for branch, count in (("rvq_first", config.num_semantic), ("rvq_rest", config.num_acoustic)):
        p = f"quantizer.{branch}"
        shapes[f"{p}.input_proj.weight"] = (config.codebook_dim, dim, 1)
        shapes[f"{p}.output_proj.weight"] = (dim, config.codebook_dim, 1)
        for level in range(count):
            cb = f"{p}.vq.layers.{level}._codebook"
            shapes[f"{cb}._initialized"] = (1,)
            shapes[f"{cb}.cluster_usage"] = (config.codebook_size,)
            shapes[f"{cb}.embedding_sum"] = (config.codebook_size, config.codebook_dim)
    shapes["downsample.conv.conv.conv.weight"] = (dim, dim, 2 * config.downsample_stride)
    shapes["upsample.convtr.convtr.convtr.weight"] = (dim, 1, 2 * config.downsample_stride)
    return shapes


# (kyutai substring, transformers substring), applied in order: the conversion transformers itself uses.
_TO_TRANSFORMERS = (
    ("conv.conv.conv", "conv"),
    ("convtr.convtr.convtr", "conv"),
    ("conv.conv", "conv"),
    ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"),
    ("_initialized", "initialized"),
    ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"),
    ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"),
    ("linear2", "mlp.fc2"),
    ("self_attn.out_proj", "self_attn.o_proj"),
    ("norm1", "input_layernorm"),
    ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"),
    ("layer_scale_2", "mlp_layer_scale"),
)


def transformers_name(kyutai_name: str) -> str:
    name = kyutai_name
    for old, new in _TO_TRANSFORMERS:
        if old in name:
            name = name.replace(old, new)
    return name


def _rope_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Interleaved-pair rows -> rotate-half rows, per head (what transformers' conversion does to q and k)."""
    rows, cols = weight.shape
    return weight.reshape(num_heads, rows // num_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _rope_unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    rows, cols = weight.shape
    return weight.reshape(num_heads, 2, rows // num_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def to_transformers_layout(tensors: dict[str, np.ndarray], config: MimiConfig) -> dict[str, np.ndarray]:
    """Kyutai names -> transformers names (q/k split out and permuted)."""
    out: dict[str, np.ndarray] = {}
    dim = config.dimension
    for name, value in tensors.items():
        new = transformers_name(name)
        if new.endswith("self_attn.in_proj_weight"):
            base = new[: -len("in_proj_weight")]
            out[base + "q_proj.weight"] = _rope_permute(value[:dim], config.num_heads)
            out[base + "k_proj.weight"] = _rope_permute(value[dim : 2 * dim], config.num_heads)
            out[base + "v_proj.weight"] = value[2 * dim :]
        else:
            out[new] = value
    return out


def from_transformers_layout(tensors: dict[str, np.ndarray], config: MimiConfig) -> dict[str, np.ndarray]:
    """Transformers names -> kyutai names (q/k rows un-permuted and joined into in_proj_weight)."""
    lookup = {transformers_name(name): name for name in expected_shapes(config)}
    out: dict[str, np.ndarray] = {}
    pending: dict[str, dict[str, np.ndarray]] = {}
    for name, value in tensors.items():
        match = re.match(r"^(.*self_attn\.)([qkv])_proj\.weight$", name)
        if match:
            pending.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        out[lookup.get(name, f"<transformers>{name}")] = value
    for base, parts in pending.items():
        kyutai_base = lookup.get(base + "in_proj_weight", f"<transformers>{base}")
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            out[f"{kyutai_base}<missing {','.join(missing)}_proj>"] = np.zeros(0)
            continue
        out[kyutai_base] = np.concatenate(
            [_rope_unpermute(parts["q"], config.num_heads), _rope_unpermute(parts["k"], config.num_heads), parts["v"]],
            axis=0,
        )
    return out


def detect_layout(names: Iterable[str]) -> Layout:
    names = list(names)
    if any(n.startswith("encoder.model.") for n in names):
        return "kyutai"
    if any(n.startswith("encoder.layers.") for n in names):
        return "transformers"
    sample = ", ".join(sorted(names)[:5]) or "no tensors at all"
    raise WeightsError(f"not a Mimi checkpoint: neither Kyutai nor transformers key names (found {sample})")


def check_tensors(tensors: dict[str, np.ndarray], config: MimiConfig, path: Path | str = "") -> None:
    """Raise one WeightsError that lists every missing, unexpected and mis-shaped tensor."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshaped = sorted(
        f"{k}: {tuple(tensors[k].shape)} (expected {expected[k]})"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != expected[k]
    )
    if not (missing or unexpected or misshaped):
        return

    def block(title: str, items: list[str]) -> str:
        shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
        return f"  {title} ({len(items)}):\n    {shown}"

    parts = [
        block(t, i) for t, i in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if i
    ]
    raise WeightsError(f"checkpoint {path} does not fit the Mimi model:\n" + "\n".join(parts))


def infer_config(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> MimiConfig:
    if CONFIG_METADATA_KEY in metadata:
        return MimiConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    return MimiConfig.official()


def load_weights(
    source: str | os.PathLike[str] | WeightsRef, *, revision: str | None = None, config: MimiConfig | None = None
) -> LoadedWeights:
    """Find (unless `source` is already a `WeightsRef`), read, convert to the kyutai layout and check a checkpoint."""
    ref = WeightsRef.resolve(source, revision)
    raw, metadata = read_safetensors(ref.path)
    layout = detect_layout(raw)
    config = config or infer_config(raw, metadata)
    tensors = raw if layout == "kyutai" else from_transformers_layout(raw, config)
    check_tensors(tensors, config, ref.path)
    logger.info("loaded %s (%s layout, %d tensors, sha256 %s)", ref.path, layout, len(tensors), ref.sha256)
    return LoadedWeights(
        tensors=tensors, config=config, layout=layout, sha256=ref.sha256, path=ref.path, source=ref.source
    )


def codebook_tables(tensors: dict[str, np.ndarray], config: MimiConfig) -> CodebookTables:
    """The quantizer's numpy tables (centroids = embedding_sum / clamp(cluster_usage, eps))."""

    def books(branch: str, count: int) -> np.ndarray:
        out = []
        for level in range(count):
            p = f"quantizer.{branch}.vq.layers.{level}._codebook"
            usage = np.maximum(tensors[f"{p}.cluster_usage"], np.float32(config.codebook_epsilon))
            out.append((tensors[f"{p}.embedding_sum"] / usage[:, None]).astype(np.float32))
        return np.stack(out)

    def proj(branch: str, which: str) -> np.ndarray:
        return tensors[f"quantizer.{branch}.{which}.weight"][..., 0].astype(np.float32)

    return CodebookTables(
        semantic_codebooks=books("rvq_first", config.num_semantic),
        acoustic_codebooks=books("rvq_rest", config.num_acoustic),
        semantic_input_proj=proj("rvq_first", "input_proj"),
        semantic_output_proj=proj("rvq_first", "output_proj"),
        acoustic_input_proj=proj("rvq_rest", "input_proj"),
        acoustic_output_proj=proj("rvq_rest", "output_proj"),
    )
