"""The torch-free runtime: ``Embedder``, ``Reranker`` and the Qwen3-Reranker template, over onnxruntime and
tokenizers only (the base install). Nothing here imports torch, transformers or onnx."""
