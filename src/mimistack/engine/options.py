"""What each engine can be asked for, as one frozen, self-checking object per engine.

`Codec.load(weights, engine=...)` takes an engine name ("auto", "torch", "onnx") or one of these objects. An option
that only one engine understands lives only in that engine's object, so a wrong combination (say `fast=True` on
ONNX Runtime) cannot be written, and a bad value fails where the object is made, not deep inside a call::

    Codec.load("kyutai/mimi", engine=TorchOptions(device="cuda", dtype="bfloat16", fast=True))
    Codec.load("kyutai/mimi", engine=OnnxOptions(onnx_dir="mimi-onnx", variant="int8"))

Standard library only; the bottom of `engine/`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal, get_args

from .base import EngineError

EngineName = Literal["auto", "torch", "onnx"]
TorchDtype = Literal["float32", "bfloat16", "float16"]
OnnxVariant = Literal["fp32", "fp16", "int8"]


def _check_threads(num_threads: int | None) -> None:
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads <= 0):
        raise EngineError(f"num_threads must be a positive integer or None, got {num_threads!r}")


def _check_device(device: str, allowed: tuple[str, ...]) -> None:
    kind = device.split(":", 1)[0]
    if not isinstance(device, str) or kind not in allowed:
        raise EngineError(f"device must be one of {', '.join(allowed)} (optionally with ':N'), got {device!r}")


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    """The PyTorch engine (needs the `[torch]` extra).

    `device`: "cpu", "cuda", "cuda:1", "mps". `dtype`: the compute dtype of the model ("float32" is exact; the
    quantizer and the latent sum always run in fp32). `num_threads`: torch's intra-op threads (None: torch's own
    choice). `fast`: the whole-input fast path for batch calls (channels-last convolutions, meant for GPU corpus
    work); codes may then differ from the exact path's on near-tied tokens. `compile`: `torch.compile` the fast
    path (needs `fast`). `allow_tf32`: on CUDA in float32, let matmuls and convolutions use TF32 (faster on recent
    GPUs; codes then differ from strict fp32 on near-tied tokens: measure with `mimistack precision`); off, the
    engine keeps strict fp32 during its calls.
    """

    device: str = "cpu"
    dtype: TorchDtype = "float32"
    num_threads: int | None = None
    fast: bool = False
    compile: bool = False
    allow_tf32: bool = False

    name: Literal["torch"] = dataclasses.field(default="torch", init=False)

    def __post_init__(self) -> None:
        _check_device(self.device, ("cpu", "cuda", "mps"))
        if self.dtype not in get_args(TorchDtype):
            raise EngineError(f"dtype must be one of {', '.join(get_args(TorchDtype))}, got {self.dtype!r}")
        _check_threads(self.num_threads)
        if self.compile and not self.fast:
            raise EngineError("compile=True compiles the fast path: pass fast=True too")


@dataclasses.dataclass(frozen=True)
class OnnxOptions:
    """The ONNX Runtime engine (no torch needed at run time).

    `onnx_dir`: a folder made by `mimistack export-onnx` (None: the cached export of the weights, made on first
    use, which needs torch once). `variant`: "fp32" (exact) or reduced-precision graphs when they were exported.
    `device`: "cpu" or "cuda" (ONNX Runtime's CUDA provider). `num_threads`: intra-op threads.
    """

    onnx_dir: str | os.PathLike[str] | None = None
    variant: OnnxVariant = "fp32"
    device: str = "cpu"
    num_threads: int | None = None

    name: Literal["onnx"] = dataclasses.field(default="onnx", init=False)

    def __post_init__(self) -> None:
        if self.variant not in get_args(OnnxVariant):
            raise EngineError(f"variant must be one of {', '.join(get_args(OnnxVariant))}, got {self.variant!r}")
        _check_device(self.device, ("cpu", "cuda"))
        _check_threads(self.num_threads)


EngineOptions = TorchOptions | OnnxOptions


def torch_available() -> bool:
    """True when `import torch` would succeed (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def resolve_options(engine: EngineName | EngineOptions) -> EngineOptions:
    """An options object for `engine`: "auto" is torch when it is installed, else ONNX Runtime."""
    if isinstance(engine, TorchOptions | OnnxOptions):
        return engine
    if engine == "auto":
        return TorchOptions() if torch_available() else OnnxOptions()
    if engine == "torch":
        return TorchOptions()
    if engine == "onnx":
        return OnnxOptions()
    raise EngineError(
        f"unknown engine {engine!r}; expected 'auto', 'torch', 'onnx', TorchOptions(...) or OnnxOptions(...)"
    )
