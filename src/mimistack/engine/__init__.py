"""Engines: the backends behind `Codec` (PyTorch, ONNX Runtime, a numpy fake) and the ONNX export.

`base` is the contract every engine honours; `options` the per-engine settings; `torch`, `onnx` and `fake` the
engines; `onnx_format` the export folder's schema; `ort_session` ONNX Runtime sessions; `export/` the writer
(needs torch); `onnx_cache` load-or-export. Nothing is imported here, so that `import mimistack.engine.onnx` stays
torch-free.
"""
