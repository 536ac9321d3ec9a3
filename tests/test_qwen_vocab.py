import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from qconv.testing.qwen_vocab import QWEN2_SPLIT_PATTERN, QWEN3_VOCAB_SIZE, _load_ranks, _ranks_file


@pytest.fixture(scope="module")
def tok(qwen3_tokenizer_dir):
    return Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))


def test_vocabulary_size_and_added_tokens(tok):
    assert len(_load_ranks(_ranks_file())) == 151643
    assert tok.get_vocab_size(with_added_tokens=True) == QWEN3_VOCAB_SIZE == 151669
    assert tok.token_to_id("<|endoftext|>") == 151643
    assert tok.token_to_id("<|im_start|>") == 151644
    assert tok.token_to_id("<|im_end|>") == 151645
    assert tok.token_to_id("<think>") == 151667
    assert tok.token_to_id("</think>") == 151668


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [9707, 1879]),
        ("yes", [9693]),
        ("no", [2152]),
        ("<|im_start|>system\n", [151644, 8948, 198]),
    ],
)
def test_known_ids(tok, text, ids):
    assert tok.encode(text, add_special_tokens=False).ids == ids


def test_appends_endoftext_like_qwen3_embedding(tok):
    # The trap: the real last token is the pad id, so pooling must follow the attention mask.
    assert tok.encode("Hello world").ids == [9707, 1879, 151643]


@pytest.mark.parametrize("text", ["如何提高借款额度", "为什么我的全部还完之后就没有额度啦？", "Ωμέγα 🤗 naïve café"])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text


def test_matches_tiktoken_on_real_text(tok):
    """Byte-level BPE merges recovered from the ranks must reproduce tiktoken exactly."""
    from importlib import resources

    import tiktoken

    encoding = tiktoken.Encoding(
        "qwen", pat_str=QWEN2_SPLIT_PATTERN, mergeable_ranks=_load_ranks(_ranks_file()), special_tokens={}
    )
    texts = []
    for name in ("sts12_test_sample.jsonl", "bq_test_sample.jsonl"):
        lines = resources.files("qconv.validate").joinpath("data", name).read_text(encoding="utf-8").splitlines()
        for line in lines[:150]:
            row = json.loads(line)
            texts += [row["sentence1"], row["sentence2"]]
    texts += ["  leading spaces\n\nand 12345 digits\tand code(x) {}", "émigré Œuvre"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == encoding.encode_ordinary(text), text


def test_loads_in_transformers_with_pad_and_padding_side(qwen3_tokenizer_dir):
    hf = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    assert hf.pad_token_id == 151643
    assert hf.padding_side == "left"
    batch = hf(["yes", "Hello world"], padding=True)
    assert batch["input_ids"][0] == [151643, 9693, 151643]
    assert batch["attention_mask"][0] == [0, 1, 1]
