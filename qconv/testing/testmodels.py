"""Random-weight Qwen3 checkpoints with the real Qwen vocabulary, built from a config (no download).

Used by the offline demo and the tests. Task metrics on random weights mean nothing; parity is real.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from qconv.testing.qwen_vocab import QWEN3_VOCAB_SIZE, write_qwen3_tokenizer

RANDOM_WEIGHTS_NOTE = "random weights: task metrics are meaningless, parity with PyTorch is real"
OUTLIERS_NOTE = "planted Qwen3-like activation outliers (no real semantics)"


def is_random_weight_model(source_path: str | Path | None) -> bool:
    """Whether a source model directory is one of qconv's random-weight test models (its marker or README)."""
    if not source_path:
        return False
    source = Path(source_path)
    readme = source / "README.md"
    return (source / "qconv_testmodel.json").is_file() or (
        readme.is_file() and "random weights" in readme.read_text(encoding="utf-8", errors="replace")
    )


@dataclass(frozen=True)
class Qwen3Shape:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 32768
    vocab_size: int = QWEN3_VOCAB_SIZE
    tie_word_embeddings: bool = True


TINY = Qwen3Shape()
# The published Qwen3 configs (Qwen3-Embedding / Qwen3-Reranker share their base model's shape).
PUBLISHED_SHAPES: dict[str, Qwen3Shape] = {
    "qwen3-0.6b": Qwen3Shape(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
    ),
    "qwen3-4b": Qwen3Shape(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
    ),
    "qwen3-8b": Qwen3Shape(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
    ),
}


# transformers' default init (std 0.02) makes a random 2-layer model map every text to nearly the same
# vector (pair cosines ~0.94 +- 0.03), so rounding noise reorders pair scores and the rank metrics
# wobble. A wider init spreads pair cosines (~0.64 +- 0.22), like a trained model's.
RANDOM_INIT_STD = 0.1


def _qwen3_config(shape: Qwen3Shape, architecture: str):
    from transformers import Qwen3Config

    return Qwen3Config(
        **asdict(shape),
        initializer_range=RANDOM_INIT_STD,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        # No pad_token_id: it would make nn.Embedding zero the <|endoftext|> row, which the real
        # checkpoints have trained (and Qwen3-Embedding pools on exactly that token).
        bos_token_id=151643,
        eos_token_id=151643,
        architectures=[architecture],
        torch_dtype="float32",
    )


def create_qwen3_embedding(
    out: str | Path,
    *,
    shape: Qwen3Shape = TINY,
    seed: int = 0,
    st_files: bool = True,
    append_eos: bool = True,
    padding_side: str = "left",
    outliers: bool = False,
) -> Path:
    """Write a random Qwen3 embedding checkpoint like Qwen3-Embedding: Qwen3Model weights, a tokenizer
    that appends <|endoftext|> (also its pad token) and, optionally, sentence-transformers files."""
    import torch
    from transformers import Qwen3Model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_qwen3_tokenizer(out, append_eos=append_eos, padding_side=padding_side)
    torch.manual_seed(seed)
    model = Qwen3Model(_qwen3_config(shape, "Qwen3Model")).eval()
    planted = _plant(model, out, seed) if outliers else None
    model.save_pretrained(out, safe_serialization=True)
    if st_files:
        files = {
            "modules.json": [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            "1_Pooling/config.json": {
                "word_embedding_dimension": shape.hidden_size,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": True,
                "include_prompt": True,
            },
            "sentence_bert_config.json": {"max_seq_length": 8192, "do_lower_case": False},
            "config_sentence_transformers.json": {
                "prompts": {
                    "query": "Instruct: Given a web search query, retrieve relevant passages that "
                    "answer the query\nQuery:",
                    "document": "",
                },
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        }
        for rel, content in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_text(json.dumps(content, indent=2), encoding="utf-8")
    _write_readme(out, "embedding", seed, planted)
    return out


def create_qwen3_reranker(out: str | Path, *, shape: Qwen3Shape = TINY, seed: int = 0, outliers: bool = False) -> Path:
    """Write a random Qwen3ForCausalLM checkpoint shaped like Qwen3-Reranker (tied LM head, real vocabulary,
    left padding, no <|endoftext|> appended). ``outliers``: the planted activation outliers and a score head
    that spreads one query's candidates like a trained reranker (qconv.testing.score_head)."""
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_qwen3_tokenizer(out, append_eos=False, padding_side="left")
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(_qwen3_config(shape, "Qwen3ForCausalLM")).eval()
    planted = None
    if outliers:
        from tokenizers import Tokenizer

        from qconv.testing.score_head import plant_score_head

        planted = _plant(model.model, out, seed)
        # With the outliers, also a trained reranker's score spread: a random head leaves candidates tied.
        vocab = Tokenizer.from_file(str(out / "tokenizer.json"))
        ids = {"yes_id": vocab.token_to_id("yes"), "no_id": vocab.token_to_id("no")}
        outlier_dims = [planted["trigger_dim"], *planted["massive_dims"], *planted["channel_dims"]]
        planted["score_head"] = plant_score_head(model, out / "tokenizer.json", exclude=outlier_dims, seed=seed, **ids)
        (out / "qconv_outliers.json").write_text(json.dumps(planted, indent=2), encoding="utf-8")
    model.save_pretrained(out, safe_serialization=True)
    _write_readme(out, "reranker", seed, planted)
    return out


def _plant(base_model, out: Path, seed: int) -> dict:
    from qconv.testing.outliers import plant_outliers, trigger_token_ids

    planted = plant_outliers(base_model, trigger_token_ids(out / "tokenizer.json"), seed=seed)
    (out / "qconv_outliers.json").write_text(json.dumps(planted, indent=2), encoding="utf-8")
    return planted


def _write_readme(out: Path, kind: str, seed: int, planted: dict | None) -> None:
    text = f"# Random Qwen3 {kind} test model\n\n{RANDOM_WEIGHTS_NOTE}. Seed {seed}.\n"
    if planted:
        text += (
            f"\n{OUTLIERS_NOTE}: massive activations written by layer {planted['generator_layer']} into dims "
            f"{planted['massive_dims']} on delimiter tokens, fixed-channel outliers in dims "
            f"{planted['channel_dims']} (see qconv_outliers.json).\n"
        )
    (out / "README.md").write_text(text, encoding="utf-8")


def parameter_count(shape: Qwen3Shape, kind: str) -> int:
    """Parameters of a shape as the ``kind`` task's test model (its ``testmodel_class``), counted on the meta
    device (nothing is allocated)."""
    import torch
    import transformers

    from qconv.tasks import get_task

    cls = getattr(transformers, get_task(kind).testmodel_class)
    with torch.device("meta"):
        model = cls(_qwen3_config(shape, cls.__name__))
    return sum(p.numel() for p in model.parameters())


def create_test_model(
    out: str | Path, shape_name: str, kind: str, layers: int | None = None, seed: int = 0, outliers: bool = False
) -> Path:
    """``qconv testmodel create``: a published Qwen3 shape with random weights and the real vocabulary;
    ``outliers`` plants trained Qwen3's activation outliers (see qconv/testing/outliers.py)."""
    from dataclasses import replace

    from qconv.errors import QconvError
    from qconv.tasks import TASKS

    shapes = {"tiny": TINY, **PUBLISHED_SHAPES}
    if shape_name not in shapes:
        raise QconvError(f"unknown shape '{shape_name}' (choose {', '.join(shapes)})")
    kinds = [name for name, task in TASKS.items() if task.testmodel_class]  # the tasks that have a test model
    if kind not in kinds:
        raise QconvError(f"unknown kind '{kind}' (choose {', '.join(kinds)})")
    shape = shapes[shape_name]
    if layers is not None:
        if not 1 <= layers <= shape.num_hidden_layers:
            raise QconvError(f"--layers must be between 1 and {shape.num_hidden_layers} for {shape_name}")
        shape = replace(shape, num_hidden_layers=layers)
    if outliers and shape.num_hidden_layers < 2:
        raise QconvError("--outliers needs at least 2 layers (a generator layer and a last layer that removes it)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise QconvError(f"{out} already exists and is not empty")
    TASKS[kind].create_testmodel(out, shape=shape, seed=seed, outliers=outliers)
    note = {
        "shape": shape_name,
        "kind": kind,
        "layers": shape.num_hidden_layers,
        "seed": seed,
        "weights": RANDOM_WEIGHTS_NOTE,
        "outliers": OUTLIERS_NOTE if outliers else None,
        "parameters": parameter_count(shape, kind),
    }
    (out / "qconv_testmodel.json").write_text(json.dumps(note, indent=2), encoding="utf-8")
    return out


def cached_test_model(kind: str, shape_name: str = "tiny", layers: int | None = None, seed: int = 0) -> Path:
    """A test model under ``$QCONV_CACHE/models`` (built once; a half-built one is never picked up)."""
    import os
    import shutil
    import tempfile

    root = Path(os.environ.get("QCONV_CACHE") or Path.home() / ".cache" / "qconv") / "models"
    name = f"testmodel-{kind}-{shape_name}" + (f"-{layers}layers" if layers else "") + f"-seed{seed}"
    target = root / name
    if (target / "qconv_testmodel.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        create_test_model(work / "model", shape_name, kind, layers=layers, seed=seed)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work / "model", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
