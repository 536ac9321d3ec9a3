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
  median), through the norm gammas. Planted: in every layer one MLP unit and one value dim (the "keepers")
  read only those channels and write only into them, holding their residual value at ~2x the residual's
  median; each norm's gamma lifts them to their post-norm ratio on ordinary tokens. The weight columns that
  read a channel are divided by only ``gamma ** reader_share`` (not by gamma: 1e-4-sized columns are
  rounded away by any 8-bit weight grid, which trained checkpoints do not show), so the outliers change
  the function a little, as they do in trained models.
- *Massive post-norm values*: after the generator layer the norms' gammas on the two massive dims put them
  at ~350x the median on trigger tokens (Qwen3-1.7B's final norm: max ~180 against a median of ~0.8).
- *Residual growth with depth*: later layers write more (``o_proj``/``down_proj`` scaled up with depth),
  and all writes are scaled so the residual's median before the last layer stands ``massive_over_median``
  (3e3) below the massive value (random init would leave it ~60x below).

Every scale is measured, not guessed: a few calibration rounds (channels in forward order, then the
residual scale, then the generator) settle them on the final function.

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
    # Readers of an outlier channel are divided by gamma ** reader_share (1 would keep the function of the
    # random model but leave 1e-4-sized weight columns that any 8-bit weight grid rounds to zero).
    reader_share: float = 0.5
    massive_post_norm_ratio: float = 350.0  # post-norm massive value on trigger tokens / the median
    # The outlier channels' residual value relative to the residual's median, kept by one unit per layer.
    channel_residual_ratio: float = 2.0
    massive_over_median: float = 3.0e3  # massive value / the residual's median before the last layer
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
    units = torch.randperm(inter, generator=rng)[: plan.generator_units + 2].tolist()
    gen_units, remover, keeper = units[:-2], units[-2], units[-1]
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
                # Only the planted units write the trigger and massive dims, and (with channel_write_scale
                # 0) only the keepers write the outlier channels.
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
        # The keepers: in every layer, one MLP unit and one value dim (of the first KV head, so the query
        # heads that share it) read only the outlier channels (positive on every ordinary token: a softmax
        # average of a near-constant value stays one) and write only into them. The channels grow with the
        # residual, as they do in trained models, instead of needing ever larger gammas.
        heads_per_kv = config.num_attention_heads // config.num_key_value_heads
        keepers = {"mlp": [keeper], "attention": [head * config.head_dim for head in range(heads_per_kv)]}
        for block in blocks:
            for proj in (block.mlp.gate_proj, block.mlp.up_proj):
                proj.weight[keeper, :] = 0.0
                proj.weight[keeper, channels] = 1.0
            block.self_attn.v_proj.weight[0, :] = 0.0
            block.self_attn.v_proj.weight[0, channels] = 1.0
            block.mlp.down_proj.weight[:, keeper] = 0.0
            block.self_attn.o_proj.weight[:, keepers["attention"]] = 0.0

        norms = [
            (block.input_layernorm, (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj))
            for block in blocks
        ] + [(block.post_attention_layernorm, (block.mlp.gate_proj, block.mlp.up_proj)) for block in blocks]
        ids, on_trigger = _calibration_ids(trigger_ids, config.vocab_size, seed)
        # Readers of the outlier channels are only partly compensated, so every gamma changes what later
        # layers see: the channels are calibrated in the order the model runs them, then the residual's
        # scale, then the massive scales; a few rounds settle them all on the final function.
        for _ in range(3):
            _calibrate_channels(base_model, ids, on_trigger, plan, norms, channels, massive, keepers)
            _calibrate_residual_scale(base_model, ids, plan)
            _calibrate_generator(base_model, ids, on_trigger, plan, gen, trigger_dim, massive, gen_units, remover)
    return {
        "plan": asdict(plan),
        "trigger_token_ids": trigger_ids,
        "trigger_dim": trigger_dim,
        "massive_dims": massive,
        "channel_dims": channels,
        "generator_layer": gen,
        "generator_units": gen_units,
        "remover_unit": remover,
        "keeper_unit": keeper,
    }


def _calibrate_residual_scale(base_model, ids, plan):
    """Scale every layer's writes so that the residual's median before the last layer is the massive value
    / ``massive_over_median`` (random init writes ~14 per layer at the 0.6B shape, so the median reached
    ~200 and the massive dims stood only ~60x above it; in trained models they stand ~1e4x above). Pre-norm
    layers see only normalized inputs, so the residual is nearly linear in this scale: a few rounds settle it."""
    captured = {}
    last = base_model.layers[-1]
    hook = last.register_forward_pre_hook(
        lambda m, a, kw: captured.__setitem__("last_in", _first(a, kw)), with_kwargs=True
    )
    try:
        for _ in range(2):
            base_model(input_ids=ids)
            scale = plan.massive_value / plan.massive_over_median / captured["last_in"].abs().median()
            for block in base_model.layers:
                block.self_attn.o_proj.weight.mul_(scale)
                block.mlp.down_proj.weight.mul_(scale)
    finally:
        hook.remove()


def _calibrate_generator(base_model, ids, on_trigger, plan, gen, trigger_dim, massive, gen_units, remover):
    """The generator units' read weight, the scale of their writes and the last layer's remover, measured
    (nothing else writes the massive dims, so the residual there is linear in these scales)."""
    blocks = base_model.layers
    mlp, last = blocks[gen].mlp, blocks[-1].mlp
    captured = {}
    # The generator units read the trigger dim with the weight that gives them a moderate activation on
    # trigger tokens (a unit weight gave ~0.05 at the 0.6B shape, so down_proj needed 2e7 to reach 1e4).
    hooks = [
        blocks[gen].post_attention_layernorm.register_forward_hook(
            lambda m, i, o: captured.__setitem__("gen_norm", o)
        ),
        blocks[gen].register_forward_hook(lambda m, i, o: captured.__setitem__("gen", _hidden(o))),
        blocks[-1].register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("last_in", _first(a, kw)), with_kwargs=True
        ),
        last.down_proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("act", a[0])),
    ]
    try:
        base_model(input_ids=ids)
        read = captured["gen_norm"][0, on_trigger, trigger_dim].abs().mean()
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[gen_units, trigger_dim] = plan.generator_activation / read
        base_model(input_ids=ids)
        written = captured["gen"][0, on_trigger, massive[0]].mean()
        mlp.down_proj.weight[massive, :] *= plan.massive_value / written
        base_model(input_ids=ids)
        before = captured["last_in"][0, on_trigger][:, massive].mean(dim=0)
        act = captured["act"][0, on_trigger, remover].mean()
        last.down_proj.weight[massive, remover] = -plan.removed_by_last_layer * before / act
    finally:
        for hook in hooks:
            hook.remove()


def _calibrate_channels(base_model, ids, on_trigger, plan, norms, channels, massive, keepers):
    """Fixed-channel outliers, set in pre-hooks as the forward pass reaches each module (so each sees every
    scale set before it). Each sublayer's keeper lifts the channels' residual value to
    ``channel_residual_ratio`` x the median of the residual it leaves; each norm's gamma then gives each
    channel its post-norm ratio on ordinary tokens. The weight columns that read a channel are divided by
    gamma ** reader_share: trained models read outlier channels with somewhat smaller weights, never with
    weights 1e4x smaller (8-bit weights would round those away; weight-only 8-bit on real Qwen3
    checkpoints shows it does not)."""
    import torch

    ordinary = ~on_trigger
    state = {}

    def remember_residual(args, kwargs):
        state["residual"] = _first(args, kwargs)[0, ordinary]

    def set_keeper(writer, args, columns):
        # The residual this writer leaves, without the keeper's own write (which only touches the channels).
        writer.weight[:, columns] = 0.0
        inputs = args[0][0, ordinary]
        after = state["residual"] + torch.nn.functional.linear(inputs, writer.weight)
        activation = inputs[:, columns].sum(dim=-1).mean()
        missing = (plan.channel_residual_ratio * after.abs().median() - after[:, channels].mean(dim=0)).clamp(min=0)
        if activation > 0:
            for column in columns:
                writer.weight[channels, column] = missing / activation

    def set_gammas(norm, args, readers):
        state["residual"] = args[0][0, ordinary]
        x = state["residual"].float()
        normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        median = normalized.abs().median()
        gammas = {}
        for channel, ratio in zip(channels, plan.channel_ratios):
            low = torch.quantile(normalized[:, channel].abs(), 0.05)
            gammas[channel] = ratio * median / low
        # On trigger tokens the massive dims dominate the RMS, so the norm alone leaves them at ~sqrt(hidden);
        # trained models' gammas lift them to ~200x the median (Qwen3-1.7B's final norm: max ~180, median ~0.8).
        x = args[0][0, on_trigger].float()
        on_massive = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))[:, massive[0]]
        if on_massive.abs().mean() > 1.0:  # only after the generator layer
            gammas.update(dict.fromkeys(massive, plan.massive_post_norm_ratio * median / on_massive.abs().mean()))
        for channel, gamma in gammas.items():
            gamma = min(float(gamma), plan.max_gamma)
            previous = float(norm.weight[channel])
            norm.weight[channel] = gamma
            for reader in readers:
                reader.weight[:, channel] *= (previous / gamma) ** plan.reader_share

    hooks = [
        norm.register_forward_pre_hook(lambda m, a, readers=readers: set_gammas(m, a, readers))
        for norm, readers in norms
    ]
    for block in base_model.layers:
        hooks += [
            block.register_forward_pre_hook(lambda m, a, kw: remember_residual(a, kw), with_kwargs=True),
            block.self_attn.o_proj.register_forward_pre_hook(lambda m, a: set_keeper(m, a, keepers["attention"])),
            block.mlp.down_proj.register_forward_pre_hook(lambda m, a: set_keeper(m, a, keepers["mlp"])),
        ]
    try:
        base_model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _first(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]
