"""Reduced-precision variants of the graphs: fp16 storage and dynamic int8.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fp16(onnx: Any, model: Any) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    with warnings.catch_warnings(), _log_level(converter_log, logging.WARNING):
        warnings.simplefilter("ignore")  # "the model has values out of fp16 range" is measured, not warned
        return convert_float_to_float16(model, keep_io_types=True)


@contextlib.contextmanager
def _log_level(log: logging.Logger, level: int) -> Iterator[None]:
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


def _int8(onnx: Any, model: Any, work_dir: Path) -> Any:
    """Dynamic int8 quantization of the MatMuls (the transformers' linear layers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"node_{index}"
    source, target = work_dir / f"int8-in-{uuid.uuid4().hex}.onnx", work_dir / f"int8-out-{uuid.uuid4().hex}.onnx"
    try:
        onnx.save_model(model, str(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("root").disabled = True
            try:
                quantize_dynamic(
                    source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=False
                )
            finally:
                logging.getLogger("root").disabled = False
        return onnx.load_model(str(target))
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
