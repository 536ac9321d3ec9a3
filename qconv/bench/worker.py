"""One benchmark runtime in its own process, so its load time and peak memory are its own.

``python -m qconv.bench.worker SPEC_JSON`` prints one JSON document on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np


def _inputs(batch: int, seq: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab, 150000), size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), dtype=np.int64)}


def _time(run, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _onnx_runner(spec: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(spec["model_path"], options, providers=spec["providers"])
    names = {i.name for i in session.get_inputs()}
    output = spec["output"]

    def make(feeds):
        feeds = {k: v for k, v in feeds.items() if k in names}
        return lambda: session.run([output], feeds)

    return make


def _last_token_hidden(model, ids, mask):
    # A base model's hidden state at the last position: what last-token pooling reads.
    return model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]


def _last_logits(model, ids, mask):
    # A causal LM's logits at the last position only.
    return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1).logits


def _logits_per_row(model, ids, mask):
    # A causal LM on one row per call, full logits: how most users score documents, one at a time.
    return [
        model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], use_cache=False).logits
        for i in range(ids.shape[0])
    ]


# How a baseline's transformers model is run on one batch: a task's ``torch_call`` (qconv/tasks) names one.
CALLS = {"last_token_hidden": _last_token_hidden, "last_logits": _last_logits, "logits_per_row": _logits_per_row}


def _torch_runner(spec: dict):
    import importlib

    import torch

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec.get("dtype", "float32"))
    module, _, name = spec["torch_model"].rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    model = model_class.from_pretrained(spec["source"], dtype=dtype, use_safetensors=True).eval()
    call = CALLS[spec["torch_call"]]

    def make(feeds):
        ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])

        def run():
            with torch.inference_mode():
                return call(model, ids, mask)

        return run

    return make


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    started = time.perf_counter()
    make = _torch_runner(spec) if spec["runtime"] == "torch" else _onnx_runner(spec)
    load_seconds = time.perf_counter() - started
    shapes = []
    for batch, seq in spec["shapes"]:
        run = make(_inputs(batch, seq, spec["vocab"], seed=batch * 1000 + seq))
        times = _time(run, spec["warmup"], spec["repeats"])
        shapes.append({"batch": batch, "seq": seq, "seconds": times})
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"pid": os.getpid(), "load_seconds": load_seconds, "peak_rss_bytes": rss_kb * 1024, "shapes": shapes}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
