"""Causal-LM reranker -> one-logit sequence classifier: score = sigmoid(h_last . (W[yes] - W[no])).

Exact, not approximate: softmax([logit_no, logit_yes])[yes] = sigmoid(logit_yes - logit_no) and the logit
difference is linear in the last hidden state. The conversion is verified in PyTorch before export.
"""

from __future__ import annotations

import numpy as np

from qconv.errors import QconvError
from qconv.runtime.template import PairEncoder, pad_batch

from .pooling import pool

VERIFY_TOLERANCE = 1e-5
VERIFY_PAIRS: tuple[tuple[str, str], ...] = (
    ("what is the capital of china?", "The capital of China is Beijing."),
    ("what is the capital of china?", "Gravity is a force that attracts two bodies towards each other."),
    ("how long is the life cycle of a flea", "The life cycle of a flea can last anywhere from 20 days to a year. " * 4),
    ("如何提高借款额度", "为什么我的全部还完之后就没有额度啦？"),
    ("x", ""),
)


def single_token_id(tokenizer, token: str) -> int:
    """The id of ``token`` when it is exactly one token of the vocabulary, else a user error."""
    ids = tokenizer.encode(token, add_special_tokens=False).ids
    if len(ids) != 1 or tokenizer.id_to_token(ids[0]) is None:
        raise QconvError(
            f"the tokenizer encodes '{token}' as {len(ids)} tokens {ids}; a yes/no reranker head "
            f"needs '{token}' to be a single token"
        )
    return ids[0]


def to_sequence_classifier(causal_model, yes_id: int, no_id: int, pad_id: int):
    """A Qwen3ForSequenceClassification sharing the causal model's body, with the yes-minus-no head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    head = causal_model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise QconvError("the LM head has a bias; the yes/no conversion supports bias-free heads only")
    config = causal_model.config.__class__.from_dict(causal_model.config.to_dict())
    config.num_labels = 1
    config.architectures = [config.architectures[0].replace("ForCausalLM", "ForSequenceClassification")]
    config.pad_token_id = pad_id
    with torch.device("meta"):  # the body is shared below: never allocate a second copy of the weights
        classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.model = causal_model.model
    weight = head.weight.detach()
    classifier.score = torch.nn.Linear(config.hidden_size, 1, bias=False, dtype=weight.dtype)
    with torch.no_grad():
        classifier.score.weight.copy_((weight[yes_id] - weight[no_id]).unsqueeze(0))
    return classifier.eval()


def build_seqcls_module(classifier):
    """(input_ids, attention_mask) -> logits [batch, 1], the last real token found from the mask."""
    import torch

    class SeqClsModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask):
            hidden = self.classifier.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.classifier.score(pool(hidden, attention_mask, "lasttoken"))

    return SeqClsModule().eval()


def build_causal_module(causal_model):
    """(input_ids, attention_mask) -> full-vocabulary logits [batch, seq, vocab], no KV cache outputs."""
    import torch

    class CausalModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = causal_model

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return CausalModule().eval()


def verify_conversion(causal_model, seqcls_module, encoder: PairEncoder, pad_id: int, yes_id: int, no_id: int) -> dict:
    """sigmoid(seq-cls logit) must equal the causal LM's softmax([no, yes])[yes], under both paddings."""
    import torch

    sequences = [encoder.encode(q, d) for q, d in VERIFY_PAIRS]
    worst = 0.0
    for side in ("left", "right"):
        ids, mask = pad_batch(sequences, pad_id, side)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        with torch.inference_mode():
            logits = causal_model(input_ids=ids_t, attention_mask=mask_t, use_cache=False).logits
            last = logits[torch.arange(len(sequences)), torch.from_numpy(mask * np.arange(mask.shape[1])).argmax(-1)]
            expected = torch.softmax(last[:, [no_id, yes_id]].double(), dim=-1)[:, 1]
            got = torch.sigmoid(seqcls_module(ids_t, mask_t)[:, 0].double())
        worst = max(worst, float((expected - got).abs().max()))
    result = {
        "pairs": len(sequences),
        "paddings": ["left", "right"],
        "max_abs_diff": worst,
        "tolerance": VERIFY_TOLERANCE,
        "passed": worst <= VERIFY_TOLERANCE,
    }
    if not result["passed"]:
        raise QconvError(
            f"seq-cls conversion check failed: |sigmoid(head) - P(yes)| = {worst:.2e} > "
            f"{VERIFY_TOLERANCE}; nothing was written"
        )
    return result
