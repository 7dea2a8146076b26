"""ONNX export of Mimi: batch, streaming, embedding and transformers.js graphs, with a manifest.

Sits on `torch.mimi` (the model it traces), `weights` (checkpoints, sha256, codebook tables), `levels`,
`engine.onnx_format` (the folder format it writes, which `engine.onnx` reads; spec in `docs/onnx.md`) and
`engine.ort_session` (sessions for its checks); used by `mimistack export-onnx` (`cli.onnx`), by
`engine.onnx_cache` (export on first use) and by the browser app. Needs the `[export]` extra (torch, onnx,
onnxscript). It never imports `engine.onnx`.

One module per step: `trace` (torch side), `graphs` (ONNX surgery), `embed`, `transformers_js`, `variants`
(fp16/int8), `checks` (against the torch model), `writer` (`export_onnx`, the orchestrator), `common`.

Written into `out_dir` (shapes for the official config: 32 levels, latent 512, frames of 1920 samples):

    encoder.onnx           pcm float32 [B, 1, N*1920] -> codes int64 [B, 32, N]              (quantizer inside)
    decoder.onnx           latent float32 [B, 512, N] -> pcm float32 [B, 1, N*1920]    (one graph, any subset)
    embed.onnx             codes int64 [B, 32, N] + level_mask float32 [32] -> latent float32 [B, 512, N]
    encoder_stream.onnx    pcm [B, 1, N*1920] + state_in_0.. -> codes + state_out_0..   (N >= 1 frames a call)
    decoder_stream.onnx    latent [B, 512, N] + state_in_0.. -> pcm + state_out_0..
    codebooks.safetensors  `levels.CodebookTables` for the numpy level algebra
    manifest.json          config, weights sha256, opset, version, files (sha256, bytes), states, checks, variants
    transformers.js/       config.json + onnx/{encoder,decoder}_model.onnx for transformers.js' `MimiModel`

How each graph is made:
- The stream graphs are traced once each with `torch.onnx.export(dynamo=True)`, batch and frame count dynamic
  (frames as a multiple of 1920; the legacy TorchScript exporter silently fixes the encoder's frame count to the
  traced one). Their state is explicit: conv left contexts, transposed-conv overlap tails, the transformers' KV
  caches of the last `context` steps and the stream position. Every state starts as zeros (the replicate-padding
  flag of the downsampling conv is stored inverted so that this holds).
- `encoder.onnx`/`decoder.onnx` are the stream graphs with every state bound to its zeros: streaming from zero
  state is batch mode's arithmetic (masked cache slots add exact zeros), so nothing is traced twice.
- `embed.onnx` and the level-prefix front of the transformers.js decoder are written with `onnx.helper`.
- The quantizer inside the encoder is written with `onnx.helper` too: exact L2 nearest centroid over the
  reference's own centroids. Float rounding differs from torch's GEMMs, so a near-tie between two centroids may
  resolve the other way (and the residual chain below it follows): the checks in the manifest count tokens.
"""

from __future__ import annotations

from .checks import _session
from .common import DEFAULT_OPSET, STREAM_MODES, ExportDependencyError, ExportError, ExportResult
from .trace import require_export_dependencies
from .transformers_js import transformers_config
from .writer import export_onnx

__all__ = [
    "DEFAULT_OPSET",
    "STREAM_MODES",
    "ExportDependencyError",
    "ExportError",
    "ExportResult",
    "_session",
    "export_onnx",
    "require_export_dependencies",
    "transformers_config",
]
