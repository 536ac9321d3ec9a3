"""A reranker test model whose scores are spread like a trained reranker's, not nearly tied.

Qwen3-Reranker scores a pair by ``logit(yes) - logit(no)`` at the last position, i.e. by the hidden state's
projection on ``W[yes] - W[no]``. In a random model that difference is a random direction: the last-token
state barely moves along it from one document to the next, every candidate of a query gets nearly the same
score, and any rounding reorders them (a random reranker's top-1 agreement measures its ties, not its
precision). A trained reranker separates candidates by several logits.

Planted here: ``W[yes] - W[no]`` is set to the direction along which the last-token state varies most
*between the documents of one query* (the top principal direction of the states centred per query), scaled
so the scores of one query's documents spread by ``spread`` logits (standard deviation). The direction leaves
out the planted outlier channels and massive dims: in trained models those are near-constant biases (they carry
no per-document signal), while in the planted model their post-norm values swing with each token's norm, so an
unconstrained direction would read almost nothing else and make every rounding of them a score error. The pairs that
measure it are random token strings in the Qwen3-Reranker template, not any validation or calibration
text. Both rows keep their mean (the LM head is tied to the embeddings, and both tokens occur in the
template's prefix), so changing them moves the states a little: a few rounds settle the direction on the
final function.

What it does not give: relevance. Which document scores highest is arbitrary (random weights); only the
separation between scores is a trained reranker's.
"""

from __future__ import annotations

from pathlib import Path

QUERIES, DOCUMENTS = 8, 12  # planting pairs: random queries, each with random documents
ROUNDS = 3


def _pairs(prefix: list[int], suffix: list[int], vocab: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed + 104_729)

    def tokens(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high, (1,), generator=generator))
        return torch.randint(1000, min(vocab, 150_000), (length,), generator=generator).tolist()

    groups = []
    for _ in range(QUERIES):
        query = tokens(4, 12)
        groups.append([prefix + query + tokens(12, 48) + suffix for _ in range(DOCUMENTS)])
    return groups


def _last_states(model, groups):
    import torch

    with torch.no_grad():
        rows = [[model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1] for ids in g] for g in groups]
    return torch.stack([torch.stack(row) for row in rows]).double()  # (queries, documents, hidden)


def plant_score_head(
    model, tokenizer_json: str | Path, *, yes_id: int, no_id: int, exclude=(), seed: int = 0, spread: float = 2.5
):
    """Rewrite the ``yes``/``no`` rows of a random ``Qwen3ForCausalLM``'s LM head in place; returns what was
    planted and measured (for ``qconv_outliers.json``). ``exclude``: hidden dims the direction must not read
    (the planted outlier channels and massive dims)."""
    import torch
    from tokenizers import Tokenizer

    from qconv.runtime.template import QWEN3_RERANKER_TEMPLATE

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    prefix = tokenizer.encode(QWEN3_RERANKER_TEMPLATE.prefix, add_special_tokens=False).ids
    suffix = tokenizer.encode(QWEN3_RERANKER_TEMPLATE.suffix, add_special_tokens=False).ids
    groups = _pairs(prefix, suffix, model.config.vocab_size, seed)
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        middle = (head[yes_id] + head[no_id]) / 2
        for _ in range(ROUNDS):
            states = _last_states(model, groups)
            within = (states - states.mean(dim=1, keepdim=True)).reshape(-1, states.shape[-1])
            within[:, list(exclude)] = 0.0
            direction = torch.linalg.svd(within, full_matrices=False).Vh[0]
            scale = spread / float((within @ direction).std())
            head[yes_id] = (middle + scale * direction / 2).to(head.dtype)
            head[no_id] = (middle - scale * direction / 2).to(head.dtype)
        states = _last_states(model, groups)
        scores = states @ (head[yes_id] - head[no_id]).double()
    per_query = scores - scores.mean(dim=1, keepdim=True)
    return {
        "spread": spread,
        "measured_spread": round(float(per_query.std()), 4),
        "planting_pairs": f"{QUERIES} random queries x {DOCUMENTS} random documents in the Qwen3-Reranker template",
    }
