"""The `transformers.js/` folder: encoder/decoder graphs and config that `@huggingface/transformers`'
`MimiModel` loads as they are.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._version import __version__
from ...config import MimiConfig
from ...levels import CodebookTables
from .embed import _embed_nodes
from .graphs import _rename, _set_dims


def _transformers_js_encoder(onnx: Any, encoder: Any, frame_size: int) -> Any:
    """encoder.onnx as transformers.js wants it: `input_values [B, 1, S]` (any S, right-padded with zeros to whole
    frames, as transformers' Mimi does) -> `audio_codes [B, K, ceil(S / frame_size)]`."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    _rename(graph, "codes", "audio_codes")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2], dtype=np.int64), "tjs/time_axis"),
            numpy_helper.from_array(np.array([frame_size], dtype=np.int64), "tjs/frame_size"),
            numpy_helper.from_array(np.zeros(5, dtype=np.int64), "tjs/pad_head"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "tjs/zero"),
        ]
    )
    front = [
        helper.make_node("Shape", ["input_values"], ["tjs/length"], start=2, end=3),
        helper.make_node("Mod", ["tjs/length", "tjs/frame_size"], ["tjs/remainder"]),
        helper.make_node("Sub", ["tjs/frame_size", "tjs/remainder"], ["tjs/missing"]),
        helper.make_node("Mod", ["tjs/missing", "tjs/frame_size"], ["tjs/pad_tail"]),
        helper.make_node("Concat", ["tjs/pad_head", "tjs/pad_tail"], ["tjs/pads"], axis=0),
        helper.make_node("Pad", ["input_values", "tjs/pads", "tjs/zero"], ["pcm"], mode="constant"),
    ]
    for index, node in enumerate(front):
        node.name = f"tjs/front_{index}_{node.op_type}"
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + body)
    graph.input[0].name = "input_values"
    _set_dims(graph.input[0], ["batch_size", 1, "sequence_length"])
    _set_dims(
        graph.output[0], ["batch_size", encoder.graph.output[0].type.tensor_type.shape.dim[1].dim_value, "frames"]
    )
    return model


def _transformers_js_decoder(onnx: Any, decoder: Any, tables: CodebookTables) -> Any:
    """decoder.onnx behind a level-prefix front: `audio_codes [B, K', N]` (K' from 1 to K: levels 0..K'-1) ->
    `audio_values [B, 1, N * frame_size]`; the missing levels are left out of the latent sum."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    num_levels = tables.num_levels
    model = onnx.ModelProto()
    model.CopyFrom(decoder)
    graph = model.graph
    _rename(graph, "pcm", "audio_values")
    embed_nodes, embed_initializers = _embed_nodes(onnx, tables, "tjs/codes", "tjs/mask", "latent", prefix="tjs")
    graph.initializer.extend(
        [
            *embed_initializers,
            numpy_helper.from_array(np.array([num_levels], dtype=np.int64), "tjs/num_levels"),
            numpy_helper.from_array(np.zeros(4, dtype=np.int64), "tjs/pad_head"),
            numpy_helper.from_array(np.zeros(1, dtype=np.int64), "tjs/pad_last"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "tjs/zero"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "tjs/one"),
            numpy_helper.from_array(np.array(num_levels, dtype=np.int64), "tjs/level_count"),
        ]
    )
    front = [
        helper.make_node("Shape", ["audio_codes"], ["tjs/given"], start=1, end=2),  # [1]: K'
        helper.make_node("Sub", ["tjs/num_levels", "tjs/given"], ["tjs/missing"]),
        helper.make_node("Concat", ["tjs/pad_head", "tjs/missing", "tjs/pad_last"], ["tjs/pads"], axis=0),
        helper.make_node("Pad", ["audio_codes", "tjs/pads"], ["tjs/codes"], mode="constant"),
        helper.make_node("Range", ["tjs/zero", "tjs/level_count", "tjs/one"], ["tjs/levels"]),
        helper.make_node("Less", ["tjs/levels", "tjs/given"], ["tjs/selected"]),
        helper.make_node("Cast", ["tjs/selected"], ["tjs/mask"], to=onnx.TensorProto.FLOAT),
    ]
    for index, node in enumerate(front):
        node.name = f"tjs/front_{index}_{node.op_type}"
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + embed_nodes + body)
    latent_input = graph.input[0]
    latent_input.name = "audio_codes"
    latent_input.type.tensor_type.elem_type = onnx.TensorProto.INT64
    _set_dims(latent_input, ["batch_size", "num_quantizers", "frames"])
    _set_dims(graph.output[0], ["batch_size", 1, "sequence_length"])
    return model


def transformers_config(config: MimiConfig, weights_sha256: str) -> dict[str, Any]:
    """A transformers `MimiConfig` (config.json) for this architecture, plus transformers.js' own settings."""
    return {
        "architectures": ["MimiModel"],
        "model_type": "mimi",
        "sampling_rate": config.sample_rate,
        "frame_rate": config.frame_rate,
        "audio_channels": 1,
        "hidden_size": config.dimension,
        "num_filters": config.n_filters,
        "num_residual_layers": 1,
        "upsampling_ratios": list(config.ratios),
        "kernel_size": config.kernel_size,
        "last_kernel_size": config.last_kernel_size,
        "residual_kernel_size": config.residual_kernel_size,
        "dilation_growth_rate": 2,
        "use_causal_conv": True,
        "pad_mode": "constant",
        "compress": config.compress,
        "trim_right_ratio": 1.0,
        "codebook_size": config.codebook_size,
        "codebook_dim": config.codebook_dim,
        "num_quantizers": config.num_levels,
        "use_conv_shortcut": False,
        "vector_quantization_hidden_dimension": config.codebook_dim,
        "num_semantic_quantizers": config.num_semantic,
        "upsample_groups": config.dimension,
        "num_hidden_layers": config.num_layers,
        "intermediate_size": config.dim_feedforward,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.dimension // config.num_heads,
        "hidden_act": "gelu",
        "max_position_embeddings": 8000,
        "initializer_range": 0.02,
        "norm_eps": config.layer_norm_eps,
        "use_cache": False,
        "use_streaming": False,
        "rope_theta": config.max_period,
        "sliding_window": config.context,
        "attention_dropout": 0.0,
        "layer_scale_initial_scale": 0.01,
        "attention_bias": False,
        "torch_dtype": "float32",
        "transformers.js_config": {"dtype": "fp32"},
        "mimistack": {
            "weights_sha256": weights_sha256,
            "mimistack_version": __version__,
            "note": "decoder_model accepts audio_codes with 1 to num_quantizers levels (a prefix)",
        },
    }


PREPROCESSOR_CONFIG = {
    "feature_extractor_type": "EncodecFeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "chunk_length_s": None,
    "overlap": None,
}
