"""INT8 accuracy recovery on the outlier-realistic test model: SmoothQuant folding, q8, --keep, --recover."""

import dataclasses
import json

import numpy as np
import onnx
import pytest

from qconv.artifact import Artifact
from qconv.convert.quantize import QuantizeOptions, detect_preset, quantize
from qconv.convert.recovery import LADDER

# The host's own preset: avx512_vnni's full 8-bit weights saturate the u8 x s8 kernel of a CPU without VNNI
# (tests run on AVX2-only hosts too), which would be a host artefact, not what these tests measure.
PRESET = detect_preset()


def _weight_matmuls(path):
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}, model


@pytest.mark.parametrize("variant", ["model", "O2"])
def test_smoothquant_fold_is_exact_on_plain_and_o2_graphs(outlier_copy, variant, tmp_path):
    from qconv.convert import smoothquant
    from qconv.convert.calibration import CALIBRATION_PAIRS
    from qconv.convert.optimize import optimize
    from qconv.convert.recovery import CalibrationSet
    from qconv.convert.variants import save_model

    if variant == "O2":
        optimize(outlier_copy, "O2")
    art = Artifact(outlier_copy)
    src = art.variant_path(variant)
    calib = CalibrationSet.build(art, src, CALIBRATION_PAIRS, "built-in")
    model = onnx.load(str(src))
    # Without the head layout a GQA model's o_proj cannot be smoothed (which query heads share a value?).
    assert not any(g.value_channel is not None for g in smoothquant.find_groups(model))
    groups = smoothquant.find_groups(model, calib.layout)
    # per layer: q/k/v after input_layernorm, gate/up after post_attention_layernorm, down_proj via up_proj,
    # o_proj via v_proj (4 query heads on 2 value heads: channel h * 32 + j reads value column (h // 2) * 32 + j)
    assert calib.layout == smoothquant.AttentionLayout(heads=4, kv_heads=2, head_dim=32)
    assert len(groups) == 4 * 6
    o_groups = [g for g in groups if g.value_channel is not None]
    assert len(o_groups) == 6 and all(g.site.startswith("attention output") for g in o_groups)
    assert list(o_groups[0].value_channel[[0, 31, 32, 64, 127]]) == [0, 31, 0, 32, 63]
    ranges = smoothquant.activation_ranges(model, groups, calib.batches, tmp_path)
    smoothed, summary = smoothquant.smooth(model, groups, ranges, 0.8)
    scales = [(s["scale_min"], s["scale_max"]) for s in summary]
    assert np.isfinite(scales).all() and min(lo for lo, _ in scales) > 0
    assert max(hi for _, hi in scales) > 10  # the planted outliers really moved into the weights
    path = tmp_path / "smoothed.onnx"
    save_model(smoothed, path, external=False)
    for got, want in zip(calib.outputs(path), calib.reference):
        assert np.abs(got - want).max() <= 1e-5


def test_calibration_texts_are_disjoint_from_validation_data():
    from importlib.resources import files

    from qconv.convert.calibration import CALIBRATION_PAIRS

    calibration = {t.strip().lower() for pair in CALIBRATION_PAIRS for t in pair}
    seen = set()
    data = files("qconv.validate") / "data"
    for name in ("sts12_test_sample.jsonl", "bq_test_sample.jsonl", "msmarco_trecdl1920_rerank.jsonl"):
        for line in (data / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts = [row.get("sentence1"), row.get("sentence2"), row.get("query")]
            for key in ("positive_passages", "negative_passages", "candidates", "passages"):
                texts += [p.get("text") if isinstance(p, dict) else p for p in row.get(key) or []]
            seen |= {t.strip().lower() for t in texts if isinstance(t, str)}
    assert len(seen) > 1000
    assert not calibration & seen
    assert not any(c in s for c in calibration for s in seen if len(c) > 20)


def test_rerankers_are_calibrated_on_rankings():
    """A reranker's ladder target reads rankings: each calibration query with several of qconv's documents, top-1
    and Spearman per query. A common score offset, which the old |difference| / largest |score| rewarded, is
    nothing to a ranking; one swapped top document is."""
    from qconv.convert.calibration import CALIBRATION_PAIRS
    from qconv.convert.recovery import RecoveryTarget, ranking_agreement
    from qconv.tasks import get_task

    ranked, groups = get_task("reranker").calibration_rankings(CALIBRATION_PAIRS)
    assert len(groups) == len(CALIBRATION_PAIRS) and all(len(g) == 8 for g in groups)
    assert ranked[groups[3][0]] == CALIBRATION_PAIRS[3]  # each query with its own document first
    assert {d for _, d in ranked} <= {d for _, d in CALIBRATION_PAIRS}  # nothing from a validation set
    assert get_task("embedding").calibration_rankings(CALIBRATION_PAIRS) is None

    want = np.array([3.0, 1.0, 2.0, 0.5, -1.0, 0.0])
    groups = [[0, 1, 2], [3, 4, 5]]
    same = ranking_agreement(want + 100.0, want, groups)  # an offset keeps every ranking
    assert same["top1_agreement"] == 1.0 and same["rank_spearman_mean"] == pytest.approx(1.0)
    swapped = ranking_agreement(np.array([1.0, 3.0, 2.0, 0.5, -1.0, 0.0]), want, groups)
    assert swapped["top1_agreement"] == 0.5 and swapped["rank_spearman_min"] == pytest.approx(-1.0)  # 3 rows
    target = RecoveryTarget()
    assert target.met({"finite": True, **same}) and not target.met({"finite": True, **swapped})
    flat = ranking_agreement(np.array([1.0, 1.0, 1.0, 0.5, -1.0, 0.0]), want, groups)  # one query all ties
    assert not target.met({"finite": True, **flat})  # no Spearman there: the mean is NaN, no target met


def test_smooth_recovers_int8_on_the_outlier_model(outlier_copy):
    plain, plain_entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET))
    variant, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, smooth="0.8"))
    assert variant == f"qint8_{PRESET}_sq"
    smooth = entry["details"]["smoothquant"]
    assert smooth["alpha"] == 0.8 and smooth["chosen_by"] == "--smooth" and smooth["scale_min"] > 0
    assert smooth["sites"] == 24 and smooth["o_proj"].startswith("6 smoothed through v_proj")
    assert smooth["by_site"] == {"attention output": 6, "gated MLP": 6, "norm gamma": 12}  # per layer: 1, 1, 2
    assert plain_entry["check"]["cosine_min"] < 0.9 <= 0.98 <= entry["check"]["cosine_min"]
    assert entry["op_counts"]["MatMulInteger"] == plain_entry["op_counts"]["MatMulInteger"]  # no runtime cost
    assert entry["details"]["calibration"]["texts"].startswith("qconv built-in")
    coupling = entry["details"]["batch_coupling"]
    assert coupling["alone_vs_batch"] < plain_entry["details"]["batch_coupling"]["alone_vs_batch"]
    report = json.loads((outlier_copy / entry["report"]).read_text())
    assert report["details"]["smoothquant"]["alpha"] == 0.8
    assert Artifact(outlier_copy).variants[variant]["report"] == entry["report"]

    # auto: every site takes the alpha (or none) whose MatMul outputs stay closest under the INT8 stand-in
    from qconv.convert.smoothquant import SITE_ALPHAS

    _, auto = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, smooth="auto"), overwrite=True)
    smooth = auto["details"]["smoothquant"]
    assert smooth["alpha"] == "per site" and len(smooth["per_site"]) == 24 and not smooth["searched"]
    for site in smooth["per_site"]:
        errors = site["output_error"]
        assert list(errors) == [str(a) for a in SITE_ALPHAS] and errors[str(site["alpha"])] == min(errors.values())
    assert sum(sum(kinds.values()) for kinds in smooth["site_alphas"].values()) == 24
    # the outliers need smoothing somewhere, and a per-site choice is no worse than one alpha for all sites
    assert any(site["alpha"] is not None for site in smooth["per_site"])
    assert auto["check"]["cosine_min"] >= entry["check"]["cosine_min"] - 1e-3


def test_keep_patterns_keep_exactly_the_named_matmuls_fp32(outlier_copy):
    modules = "model.layers.2.mlp.down_proj,model.layers.5.mlp.up_proj"
    _, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, keep=modules))
    fp32, model = _weight_matmuls(outlier_copy / entry["file"])
    from qconv.convert.quantize import module_scope

    nodes = {n.name: n for n in model.graph.node}
    assert sorted(module_scope(nodes[n]) for n in fp32) == sorted(modules.split(","))
    assert {r["node"] for r in entry["details"]["kept"]["nodes"]} == fp32
    assert entry["op_counts"]["MatMulInteger"] == 6 * 7 - 2


def test_keep_n_follows_the_sensitivity_ranking_and_the_proxy_ranks_like_the_exact_measure(outlier_copy, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qconv.convert.calibration import CALIBRATION_PAIRS
    from qconv.convert.quantize import _weight_matmuls as weight_matmuls
    from qconv.convert.recovery import CalibrationSet, sensitivity

    _, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, keep="3"))
    kept = entry["details"]["kept"]
    assert [r["node"] for r in kept["nodes"]] == [r["node"] for r in kept["most_sensitive"][:3]]
    assert _weight_matmuls(outlier_copy / entry["file"])[0] == {r["node"] for r in kept["nodes"]}

    # The proxy against the exact measure (pooled output with only that MatMul quantized): the proxy's top 3
    # hurt more than its bottom 8.
    art = Artifact(outlier_copy)
    src = art.variant_path("model")
    calib = CalibrationSet.build(art, src, CALIBRATION_PAIRS, "built-in")
    model = onnx.load(str(src))
    ranking = sensitivity(model, weight_matmuls(model, set()), calib.batches, tmp_path)

    def exact(name):
        out = tmp_path / f"{name}.onnx"
        quantize_dynamic(
            str(src),
            str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=[name],
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
        return 1 - calib.compare(calib.outputs(out))["cosine_mean"]

    top = [exact(r["node"]) for r in ranking[:3]]
    bottom = [exact(r["node"]) for r in ranking[-8:]]
    assert min(top) > max(bottom)


@pytest.mark.parametrize(
    ("cosines", "tried", "kept"),
    [
        # no better than keeping 1 after two more doublings: stop (the error is not in a few MatMuls)
        ([0.90, 0.85, 0.89, 0.99, 0.99], [1, 2, 4], 1),
        # a gain resets the count: 4 beats 1, then 8 and 10 (a quarter of 42) do not, and the search ends anyway
        ([0.90, 0.85, 0.91, 0.88, 0.87], [1, 2, 4, 8, 10], 4),
        ([0.90, 0.85, 0.91, 0.88, 0.87, 0.99], [1, 2, 4, 8, 10], 4),
    ],
)
def test_keep_auto_stops_when_keeping_more_stops_helping(outlier_copy, monkeypatch, cosines, tried, kept):
    from qconv.convert import quantize as quantize_module

    build, calls = quantize_module._candidate, []

    def candidate(*args, **kwargs):
        metrics = build(*args, **kwargs)
        calls.append(args[6])  # the step's folder name
        metrics.update(cosine_min=cosines[len(calls) - 1], cosine_mean=cosines[len(calls) - 1], meets_target=False)
        return metrics

    monkeypatch.setattr(quantize_module, "_candidate", candidate)
    _, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, keep="auto"))
    record = entry["details"]["kept"]
    assert [s["kept"] for s in record["steps"]] == tried and calls == [f"keep{n}" for n in tried]
    assert len(record["nodes"]) == kept == len(_weight_matmuls(outlier_copy / entry["file"])[0])
    assert ("stopped" in record) == (tried == [1, 2, 4])
    if tried == [1, 2, 4]:
        assert record["stopped"].startswith("2 doublings in a row did not improve on keeping 1")


def test_per_token_activations_remove_batch_coupling(outlier_copy):
    _, plain = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET))
    variant, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, activations="per-token"))
    assert variant == f"qint8_{PRESET}_pt" and entry["options"]["activations"] == "per-token"
    # every INT8 MatMul of the plain graph, its epilogue fused (weight scale in the GEMM, then the row scale)
    assert entry["op_counts"]["MatMulIntegerToFloat"] == plain["op_counts"]["MatMulInteger"]
    assert "MatMulInteger" not in entry["op_counts"]
    assert "DynamicQuantizeLinear" not in entry["op_counts"] and entry["details"]["per_token_inputs"] > 0
    coupling, before = entry["details"]["batch_coupling"], plain["details"]["batch_coupling"]
    # a text's output no longer depends on its batch or padding (beyond the fp32 source's own rounding)
    assert coupling["alone_vs_batch"] <= max(coupling["source_alone_vs_batch"], 0) + 1e-5
    assert coupling["left_vs_right"] <= max(coupling["source_left_vs_right"], 0) + 1e-5
    assert before["alone_vs_batch"] > 100 * max(coupling["alone_vs_batch"], 1e-7)


def test_recover_auto_stops_at_the_first_passing_rung(outlier_copy, monkeypatch):
    from qconv.convert import quantize as quantize_module

    # One alpha for every site, searched by building candidates (what q8 does; int8 chooses per site without
    # building any): the search and its clean-up are what this test watches.
    monkeypatch.setattr(quantize_module.Int8Dynamic, "fake_quant", lambda self, config: None)

    # Every search candidate and failed rung is removed as soon as it lost (0.6-2.4 GB each at 0.6B):
    # whenever a new candidate is built, at most the current search's best one is on disk.
    build, on_disk = quantize_module._candidate, []

    def candidate(*args, **kwargs):
        staged = outlier_copy / "onnx"
        on_disk.append((len(list(staged.rglob("candidate.onnx"))), len(list(staged.rglob("rung.onnx")))))
        return build(*args, **kwargs)

    monkeypatch.setattr(quantize_module, "_candidate", candidate)
    variant, entry = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=PRESET, recover="auto"))
    # A passing rung (its search's best candidate) stays on disk while its coupling-free twin is tried, so
    # the twin's search may see two models; the first search (five alphas) never more than one.
    assert len(on_disk) >= 5 and all(candidates <= 1 and rungs == 0 for candidates, rungs in on_disk[:5]), on_disk
    assert all(candidates + rungs <= 2 for candidates, rungs in on_disk), on_disk
    assert sorted(p.name for p in (outlier_copy / "onnx").iterdir() if p.name.startswith(".")) == []
    assert variant == f"qint8_{PRESET}_recovered"
    recovery = entry["details"]["recovery"]
    tried = [c["rung"] for c in recovery["candidates"]]
    # Which smoothing rung passes first depends on the host's kernels (per-tensor int8+smooth met the target
    # on AVX-512 VNNI hosts, just missed it on AVX2 ones): the ladder's order and its stop are what is tested.
    # A passing rung with a coupling-free twin is followed by that twin (and only by it).
    passed = next(i for i, c in enumerate(recovery["candidates"]) if c["meets_target"])
    assert tried[: passed + 1] == [rung.name for rung in LADDER[: passed + 1]]
    assert tried[passed + 1 :] == ([LADDER[passed].twin] if LADDER[passed].twin else [])
    assert recovery["chosen"] in tried[passed:]
    if recovery["chosen"] != tried[passed]:
        assert recovery["preferred"] == {
            "chosen": recovery["chosen"],
            "over": tried[passed],
            "why": recovery["preferred"]["why"],
        }
    assert passed >= 1 and recovery["order"] == [rung.name for rung in LADDER]
    first, *failed = recovery["candidates"][:passed]
    chosen = next(c for c in recovery["candidates"] if c["rung"] == recovery["chosen"])
    assert not first["meets_target"] and first["cosine_min"] < 0.9
    assert not any(c["meets_target"] for c in failed)
    assert chosen["meets_target"] and chosen["cosine_min"] >= 0.98 and chosen["cosine_mean"] >= 0.995
    assert all(c["latency_ms"] > 0 and c["batch_coupling"]["left_vs_right"] >= 0 for c in recovery["candidates"])
    assert recovery["source_latency_ms"] > 0
    assert all(
        c["speedup_vs_source"] == round(recovery["source_latency_ms"] / c["latency_ms"], 2)
        for c in recovery["candidates"]
    )
    assert entry["check"]["cosine_min"] >= 0.98  # on the built-in parity texts too (not used to choose)
    smooth = entry["details"]["smoothquant"]
    assert [s["alpha"] for s in smooth["searched"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
    best = max(smooth["searched"], key=lambda s: (s["cosine_min"], s["cosine_mean"]))
    assert smooth["alpha"] == best["alpha"] and smooth["chosen_by"].startswith("best calibration parity")
    report = json.loads((outlier_copy / entry["report"]).read_text())
    assert [c["rung"] for c in report["details"]["recovery"]["candidates"]] == tried


def test_recover_that_meets_nothing_writes_nothing(artifact_copy, monkeypatch):
    from qconv.convert import recovery
    from qconv.convert.quantize import MODES
    from qconv.errors import GateFailed

    before = sorted(p.name for p in (artifact_copy / "onnx").iterdir())
    monkeypatch.setattr(recovery.RecoveryTarget, "met", lambda self, metrics: False)
    monkeypatch.setattr(recovery, "LADDER", (recovery.LADDER[0], *recovery.LADDER[-2:]))  # int8, q8 levels 4, 1
    # Every rung starts from the fp32 graph: onnxruntime's 8-bit quantizer rewrites the graph it is given,
    # and q8 level 1 once got level 4's already quantized graph (the same figures, on every model).
    q8, given = MODES["q8"], []

    def run(model, *args):
        given.append(sorted({n.op_type for n in model.graph.node} & {"MatMul", "MatMulNBits"}))
        return type(q8).run(q8, model, *args)

    monkeypatch.setattr(q8, "run", run)
    with pytest.raises(GateFailed, match="no rung meets the calibration target") as failed:
        quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2", recover="auto"))
    assert given == [["MatMul"], ["MatMul"]]
    assert "q8 accuracy level 4" in str(failed.value) and "q8 accuracy level 1" in str(failed.value)
    assert sorted(p.name for p in (artifact_copy / "onnx").iterdir()) == before


@pytest.mark.parametrize("source_ms", [1e-3, 1e6])
def test_a_chosen_rung_slower_than_its_source_is_said(artifact_copy, monkeypatch, source_ms):
    from qconv.convert import recovery

    build = recovery.CalibrationSet.build.__func__

    def timed_source(cls, *args):
        calib = build(cls, *args)
        calib.source_latency_ms = source_ms  # the fp32 source "ran" in 1 us or in 17 minutes
        return calib

    monkeypatch.setattr(recovery.CalibrationSet, "build", classmethod(timed_source))
    monkeypatch.setattr(recovery.RecoveryTarget, "met", lambda self, metrics: True)
    monkeypatch.setattr(recovery, "LADDER", (dataclasses.replace(recovery.LADDER[0], twin=None),))
    _, entry = quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2", recover="auto"))
    record = entry["details"]["recovery"]
    assert record["chosen"] == "int8" and record["source_latency_ms"] == source_ms
    if source_ms < 1:
        assert record["candidates"][0]["speedup_vs_source"] < 1
        assert record["note"].startswith("int8 ran at ") and "saves memory, not time" in record["note"]
    else:
        assert record["candidates"][0]["speedup_vs_source"] > 1 and "note" not in record


@pytest.mark.parametrize("slower_ok", [1e9, -1.0])
def test_a_passing_rung_gives_way_to_its_coupling_free_twin(artifact_copy, monkeypatch, slower_ok):
    from qconv.convert import recovery

    # Every rung passes: plain int8 is first, its per-token twin is tried next; with slower_ok 1e9 the twin is
    # always fast enough, with -1 never, so the first rung stays (the threshold itself: test_twin_rule).
    monkeypatch.setattr(recovery.RecoveryTarget, "met", lambda self, metrics: True)
    monkeypatch.setattr(recovery, "TWIN_SLOWER_OK", slower_ok)
    latency = {}

    def prefer(first, twin):
        latency.update(first=first["latency_ms"], twin=twin["latency_ms"])
        return prefer_twin(first, twin)

    prefer_twin = recovery.prefer_twin
    monkeypatch.setattr(recovery, "prefer_twin", prefer)
    variant, entry = quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2", recover="auto"))
    record = entry["details"]["recovery"]
    assert [c["rung"] for c in record["candidates"]] == ["int8", "int8 per-token"]
    model = onnx.load(str(artifact_copy / entry["file"]), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert latency["first"] > 0 and latency["twin"] > 0
    if slower_ok > 0:
        assert record["chosen"] == "int8 per-token" and record["preferred"]["over"] == "int8"
        assert "no output depends on what else is in its batch" in record["preferred"]["why"]
        assert "DynamicQuantizeLinear" not in ops and "MatMulIntegerToFloat" in ops
        assert entry["details"]["batch_coupling"]["alone_vs_batch"] < 1e-6
    else:
        assert record["chosen"] == "int8" and "preferred" not in record
        assert "DynamicQuantizeLinear" in ops
    assert variant == "qint8_avx2_recovered"
    assert not [p for p in (artifact_copy / "onnx").iterdir() if p.name.startswith(".")]


def test_twin_rule():
    from qconv.convert.recovery import TWIN_SLOWER_OK, prefer_twin

    first = {"meets_target": True, "latency_ms": 100.0}
    assert prefer_twin(first, {"meets_target": True, "latency_ms": 100.0 * (1 + TWIN_SLOWER_OK)})
    assert prefer_twin(first, {"meets_target": True, "latency_ms": 80.0})
    assert prefer_twin(first, {"meets_target": True, "latency_ms": 100.0 * (1 + TWIN_SLOWER_OK) + 1}) is None
    assert prefer_twin(first, {"meets_target": False, "latency_ms": 50.0}) is None
    # every rung named as a twin is a later rung of the ladder, with per-token activations
    names = [rung.name for rung in LADDER]
    for index, rung in enumerate(LADDER):
        if rung.twin:
            assert names.index(rung.twin) > index
            assert LADDER[names.index(rung.twin)].changes["activations"] == "per-token"


def test_q8_both_accuracy_levels(artifact_copy):
    for level in (4, 1):
        variant, entry = quantize(artifact_copy, "q8", options=QuantizeOptions(accuracy_level=level, block_size=32))
        assert variant == f"q8_acc{level}" and entry["precision"] == "q8"
        model = onnx.load(str(artifact_copy / entry["file"]), load_external_data=False)
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == 14
        attrs = {a.name: a.i for a in nbits[0].attribute}
        assert attrs["bits"] == 8 and attrs["accuracy_level"] == level and attrs["block_size"] == 32
        assert entry["check"]["finite"] and entry["check"]["cosine_min"] >= 0.99
        assert "batch_coupling" in entry["details"]


def test_smoothed_q8_is_its_own_variant(artifact_copy):
    # Smoothed weights are another model: writing them under q8_acc4 replaced (or refused) the plain one.
    plain, _ = quantize(artifact_copy, "q8", options=QuantizeOptions(accuracy_level=4))
    smoothed, entry = quantize(artifact_copy, "q8", options=QuantizeOptions(accuracy_level=4, smooth="0.5"))
    assert (plain, smoothed) == ("q8_acc4", "q8_acc4_sq")
    assert entry["details"]["smoothquant"]["alpha"] == 0.5
    assert (artifact_copy / "onnx" / "model_q8_acc4.onnx").is_file()
    assert (artifact_copy / "onnx" / "model_q8_acc4_sq.onnx").is_file()


def test_bad_recovery_input_is_one_line_and_writes_nothing(artifact_copy, run_cli, monkeypatch, tmp_path):
    from qconv.convert import quantize as quantize_module

    before = sorted(p.name for p in (artifact_copy / "onnx").iterdir())
    manifest = (artifact_copy / "qconv.json").read_bytes()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    cases = [
        (["--mode", "int8", "--smooth", "0"], "--smooth must be in (0, 1]"),
        (["--mode", "int8", "--smooth", "1.5"], "--smooth must be in (0, 1]"),
        (["--mode", "int8", "--smooth", "strong"], "--smooth must be a number"),
        (["--mode", "fp16", "--smooth", "0.8"], "--smooth applies to --mode int8 or q8"),
        (["--mode", "int8", "--smooth", "auto", "--calibration", tmp_path / "nope.txt"], "does not exist"),
        (["--mode", "int8", "--recover", "auto", "--calibration", empty], "has no texts"),
        # the message names a module of this graph, to copy the spelling from
        (
            ["--mode", "int8", "--keep", "model.layers.9.*"],
            "matches no weight MatMul (node names or modules like 'model.layers.0.self_attn.q_proj')",
        ),
        (["--mode", "q4", "--recover", "auto"], "--recover auto starts from --mode int8"),
        (["--mode", "q8", "--accuracy-level", "2"], "--accuracy-level 2 is not supported for q8"),
        (["--mode", "int8", "--activations", "per-row"], "unknown --activations 'per-row'"),
        (["--mode", "q8", "--activations", "per-token"], "--activations applies to --mode int8, not q8"),
    ]
    for args, message in cases:
        code, _, err = run_cli("quantize", artifact_copy, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    monkeypatch.setattr(quantize_module, "_q8_kernels_missing", lambda: "no 8-bit MatMulNBits kernel")
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "q8")
    assert code == 2 and "needs 8-bit MatMulNBits" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (artifact_copy / "onnx").iterdir()) == before
    assert (artifact_copy / "qconv.json").read_bytes() == manifest


@pytest.mark.slow
def test_real_weights_recovered_int8_on_sts12(minilm_artifact, tmp_path):
    """all-MiniLM-L6-v2 (real weights): the recovered INT8 stays within 0.005 Spearman of PyTorch on STS12."""
    import shutil

    from qconv.validate.embedding import validate_embedding

    art = tmp_path / "minilm"
    shutil.copytree(minilm_artifact, art, ignore=shutil.ignore_patterns(".cache"))
    variant, entry = quantize(art, "int8", options=QuantizeOptions(preset=PRESET, recover="auto"))
    result = validate_embedding(art, "sts12", variant=variant)
    assert result["passed"] and abs(result["delta"]) <= 0.005
    recovery = entry["details"]["recovery"]
    assert next(c for c in recovery["candidates"] if c["rung"] == recovery["chosen"])["meets_target"]
