"""Plant the activation-outlier structure of trained Qwen3 models into a random Qwen3 model, through the
weights alone (the checkpoint exports like any other).

What trained Qwen3 / Qwen2.5 / Llama models show (Sun et al. 2024, "Massive activations in LLMs", and
measurements on Qwen3-1.7B), and how it is planted here:

- *Massive activations*: an early layer's MLP writes ~1e4 into two fixed hidden dims on a few tokens
  (delimiters); the residual keeps it through the middle layers and the last layer removes most of it.
  Planted: the trigger tokens' embedding rows carry a dedicated dim; a few MLP units of the generator layer
  read only that dim and their ``down_proj`` columns write only the two massive dims; no other layer writes
  those dims, except a unit of the last layer that reads them and cancels ~90%.
- *Fixed-channel outliers*: a few channels are large on every token after every RMSNorm (~50-200x the
  median), through the norm gammas. Planted: a constant offset in those residual channels and large gammas,
  with the weight columns that read them scaled down by the same factor (the model's function stays that
  of a random model; only its activations carry the outliers).
- *Residual growth with depth*: later layers write more (``o_proj``/``down_proj`` scaled up with depth).

What it cannot reproduce: real semantics (task metrics stay meaningless), the first-token massive
activation (Qwen3 has no BOS token and position-only triggers would need a planted attention circuit), and
the exact magnitudes of any particular checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Delimiters that carry massive activations in trained Qwen models (ASCII and CJK punctuation, newline).
TRIGGER_TEXTS = (",", ".", ":", "?", "!", "\n", "，", "。", "：", "？")


@dataclass(frozen=True)
class OutlierPlan:
    massive_value: float = 1.4e4  # residual value in the first massive dim on trigger tokens
    second_dim_ratio: float = -0.6  # the second massive dim, relative to the first
    removed_by_last_layer: float = 0.9
    trigger_embedding_value: float = 1.0  # the dedicated dim of trigger embedding rows (rows have std 0.1)
    generator_units: int = 4
    # post-norm |value| / median of all values, reached by 95% of the ordinary tokens, per channel
    channel_ratios: tuple[float, ...] = (60.0, 80.0, 100.0)
    channel_offset: float = 0.3  # residual offset of the outlier channels (3x the embedding std)
    # Other layers' writes into the outlier channels. Zero keeps each channel's offset exact on every token:
    # with random writes on top, some tokens land near zero there and the gamma that lifts even those to
    # the ratio overflows fp16 at the 0.6B shape (1.8e5 measured), which trained checkpoints never do.
    channel_write_scale: float = 0.0
    generator_activation: float = 4.0  # gate/up pre-activation of the generator units on trigger tokens
    max_gamma: float = 2.0e4  # every planted weight stays well inside fp16 (65504), as in trained models
    depth_growth: float = 1.0  # layer l's writes scaled by 1 + depth_growth * l / layers


def generator_layer(layers: int) -> int:
    """Qwen3-0.6B/1.7B (28 layers) write their massive activations in layer 2; shallower models earlier."""
    return max(0, min(2, layers - 2))


def trigger_token_ids(tokenizer_json) -> list[int]:
    """Ids of the trigger texts that are single tokens of the tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    ids = []
    for text in TRIGGER_TEXTS:
        encoded = tokenizer.encode(text, add_special_tokens=False).ids
        if len(encoded) == 1:
            ids.append(encoded[0])
    return sorted(set(ids))


def _calibration_ids(trigger_ids: list[int], vocab: int, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, min(vocab, 150_000), (1, 48), generator=generator)
    ids[0, 3::6] = torch.tensor(trigger_ids).repeat(8)[: ids[0, 3::6].numel()]
    return ids, torch.isin(ids[0], torch.tensor(trigger_ids))


def plant_outliers(base_model, trigger_ids: list[int], *, seed: int = 0, plan: OutlierPlan | None = None) -> dict:
    """Rewrite a random ``Qwen3Model``'s weights in place; returns the planted dims and layers (for the note)."""
    import torch

    from qconv.errors import QconvError

    plan = plan or OutlierPlan()
    config = base_model.config
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    if layers < 2:
        raise QconvError("--outliers needs at least 2 layers (a generator layer and a last layer that removes it)")
    if not trigger_ids:
        raise QconvError("--outliers: no trigger token is a single token of this tokenizer")
    rng = torch.Generator().manual_seed(seed + 7919)
    dims = torch.randperm(hidden, generator=rng).tolist()
    trigger_dim, massive = dims[0], dims[1:3]
    channels = dims[3 : 3 + len(plan.channel_ratios)]
    units = torch.randperm(inter, generator=rng)[: plan.generator_units + 1].tolist()
    gen_units, remover = units[:-1], units[-1]
    gen = generator_layer(layers)
    blocks = base_model.layers
    trig = torch.tensor(trigger_ids)

    with torch.no_grad():
        table = base_model.embed_tokens.weight
        table[:, [trigger_dim, *massive]] = 0.0
        table[trig, trigger_dim] = plan.trigger_embedding_value
        table[:, channels] = plan.channel_offset
        for index, block in enumerate(blocks):
            attn, mlp = block.self_attn, block.mlp
            growth = 1.0 + plan.depth_growth * index / layers
            for writer in (attn.o_proj, mlp.down_proj):
                writer.weight.mul_(growth)
                # Only the planted units write the trigger and massive dims; the channel offsets persist.
                writer.weight[[trigger_dim, *massive], :] = 0.0
                writer.weight[channels, :] *= plan.channel_write_scale
        # The generator: units that read only the trigger dim and write only the massive dims.
        mlp = blocks[gen].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[gen_units, :] = 0.0
            proj.weight[gen_units, trigger_dim] = 1.0
        mlp.down_proj.weight[:, gen_units] = 0.0
        mlp.down_proj.weight[massive[0], gen_units] = 1.0
        mlp.down_proj.weight[massive[1], gen_units] = plan.second_dim_ratio
        # The remover: a last-layer unit that reads the first massive dim (zero on every other token).
        last = blocks[-1].mlp
        for proj in (last.gate_proj, last.up_proj):
            proj.weight[remover, :] = 0.0
            proj.weight[remover, massive[0]] = 1.0
        last.down_proj.weight[:, remover] = 0.0

        # Calibrate the two free scales on a forward pass (nothing else writes the massive dims, so the
        # residual there is linear in them).
        ids, on_trigger = _calibration_ids(trigger_ids, config.vocab_size, seed)
        captured = {}
        # The generator units read the trigger dim with the weight that gives them a moderate activation on
        # trigger tokens (a unit weight gave ~0.05 at the 0.6B shape, so down_proj needed 2e7 to reach 1e4).
        gen_norm = blocks[gen].post_attention_layernorm
        hook = gen_norm.register_forward_hook(lambda m, i, o: captured.__setitem__("gen_norm", o))
        try:
            base_model(input_ids=ids)
        finally:
            hook.remove()
        read = captured["gen_norm"][0, on_trigger, trigger_dim].abs().mean()
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[gen_units, trigger_dim] = plan.generator_activation / read
        norms = [
            (block.input_layernorm, (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj))
            for block in blocks
        ] + [(block.post_attention_layernorm, (block.mlp.gate_proj, block.mlp.up_proj)) for block in blocks]
        hooks = [
            norm.register_forward_hook(lambda m, i, o, key=index: captured.__setitem__(key, o))
            for index, (norm, _) in enumerate(norms)
        ]
        hooks += [
            blocks[gen].register_forward_hook(lambda m, i, o: captured.__setitem__("gen", _hidden(o))),
            blocks[-1].register_forward_pre_hook(
                lambda m, a, kw: captured.__setitem__("last_in", _first(a, kw)), with_kwargs=True
            ),
            last.down_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("act", a[0])),
        ]
        try:
            base_model(input_ids=ids)
            written = captured["gen"][0, on_trigger, massive[0]].mean()
            mlp.down_proj.weight[massive, :] *= plan.massive_value / written
            base_model(input_ids=ids)
            before = captured["last_in"][0, on_trigger][:, massive].mean(dim=0)
            act = captured["act"][0, on_trigger, remover].mean()
            last.down_proj.weight[massive, remover] = -plan.removed_by_last_layer * before / act
            # Fixed-channel outliers: the gamma that gives each channel its post-norm ratio on ordinary
            # tokens; the weight columns reading the channel are divided by it, so the function is unchanged
            # (which is also why one pass measures every norm).
            base_model(input_ids=ids)
            for index, (norm, readers) in enumerate(norms):
                normalized = captured[index][0, ~on_trigger] / norm.weight
                median = normalized.abs().median()
                for channel, ratio in zip(channels, plan.channel_ratios):
                    low = torch.quantile(normalized[:, channel].abs(), 0.05)
                    gamma = min(float(ratio * median / low), plan.max_gamma)
                    norm.weight[channel] = gamma
                    for reader in readers:
                        reader.weight[:, channel] /= gamma
        finally:
            for hook in hooks:
                hook.remove()
    return {
        "plan": asdict(plan),
        "trigger_token_ids": trigger_ids,
        "trigger_dim": trigger_dim,
        "massive_dims": massive,
        "channel_dims": channels,
        "generator_layer": gen,
        "generator_units": gen_units,
        "remover_unit": remover,
    }


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _first(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]
