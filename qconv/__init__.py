"""qconv: Qwen3 embedding and reranker models as fast, verified ONNX artifacts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qconv")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["Embedder", "Reranker", "__version__"]


def __getattr__(name: str):
    # Lazy: importing qconv must not pull onnxruntime (or torch) until something is used.
    if name == "Embedder":
        from qconv.runtime.embedder import Embedder

        return Embedder
    if name == "Reranker":
        from qconv.runtime.reranker import Reranker

        return Reranker
    raise AttributeError(name)
