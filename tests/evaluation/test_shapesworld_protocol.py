"""The per-kind ShapesWorld protocol: model-free baselines, scene statistics, bootstrap intervals, the CLI option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conceptattention.cli.main import main as cli_main
from conceptattention.evaluation.baselines import (
    BaselineError,
    all_background_maps,
    colour_prior_maps,
    layout_prior_maps,
)
from conceptattention.evaluation.bootstrap import bootstrap_metric, resample_weights
from conceptattention.evaluation.methods import MapRequest, MethodError, get_method
from conceptattention.evaluation.shapesworld_protocol import (
    argmax_labels,
    compute_metrics,
    protocol_concept_sets,
    run_per_kind,
    scene_stats,
)
from conceptattention.shapesworld import ShapesWorldDataset
from conceptattention.shapesworld.dataset import ShapesWorldSample
from conceptattention.shapesworld.render import PALETTE, ObjectSpec, SceneSpec, render_scenes


def _sample(spec: SceneSpec, caption: str = "") -> ShapesWorldSample:
    batch = render_scenes([spec])
    return ShapesWorldSample(batch.images[0], batch.background[0], batch.object_class[0], batch.colour[0],
                             batch.instance[0], caption, spec)  # fmt: skip


HAND_MADE = SceneSpec(
    horizon=15.0,
    ground="grass",
    objects=(ObjectSpec("sun", "yellow", cx=8.0, cy=7.0), ObjectSpec("house", "purple", cx=22.0, cy=29.0)),
)


def _metrics_of(method_name: str, samples, version: str = "v1", **kwargs):
    method = get_method(method_name)
    rows = []
    for sample in samples:
        sets = protocol_concept_sets(sample, **kwargs)
        requests = [MapRequest(sample.pil(), s.concepts, sample.caption, version) for s in sets]
        maps = method.compute_maps(None, requests)
        rows.append(scene_stats({s.name: m for s, m in zip(sets, maps)}, sets, sample))
    return compute_metrics(rows, resamples=200)


# ----- baselines -------------------------------------------------------------------------------------------------


def test_colour_prior_names_every_palette_colour():
    words = list(PALETTE)
    image = torch.tensor([PALETTE[w] for w in words]).T.reshape(3, 1, len(words))  # [3, 1, 9]: one pixel per colour
    assert colour_prior_maps(image, words).argmax(0)[0].tolist() == list(range(len(words)))


def test_colour_prior_gets_a_hand_made_scene_right():
    sample = _sample(HAND_MADE)
    metrics = _metrics_of("colour-prior", [sample], num_distractors=0)
    assert metrics["names.pixel_accuracy"]["value"] > 0.97
    assert metrics["object.argmax_iou"]["value"] > 0.9
    assert metrics["object.auroc"]["value"] > 0.97 and metrics["background.auroc"]["value"] > 0.97
    assert metrics["colour.argmax_iou"]["value"] > 0.9  # yellow disc and rays, purple body


def test_colour_prior_ties_do_not_follow_the_list_order():
    yellow = torch.tensor(PALETTE["yellow"]).view(3, 1, 1)  # [3, 1, 1]: sun and house may both be yellow
    first = colour_prior_maps(yellow, ["house", "sun"]).argmax(0).item()
    second = colour_prior_maps(yellow, ["sun", "house"]).argmax(0).item()
    assert (first, second) == (1, 0)  # "sun" both times: it comes first in the vocabulary


def test_layout_prior_and_all_background_on_a_hand_made_scene():
    sample = _sample(HAND_MADE)
    layout = _metrics_of("layout-prior", [sample], num_distractors=2)
    assert layout["object.auroc"]["value"] == 0.5 and layout["object.argmax_iou"]["value"] == 0.0
    assert layout["background.auroc"]["value"] > 0.85
    assert layout["names.absent_share"]["value"] == 0.0
    maps = layout_prior_maps(32, 32, ["sun", "sky", "grass"])
    assert (maps.argmax(0)[:16] == 1).all() and (maps.argmax(0)[16:] == 2).all()
    empty = _metrics_of("all-background", [sample])
    assert empty["names.pixel_accuracy"]["value"] == 0.0  # every pixel is a tie: no concept
    assert empty["object.auroc"]["value"] == 0.5 and empty["background.auroc"]["value"] == 0.5
    assert (argmax_labels(all_background_maps(4, 4, ["sun", "sky"])) == -1).all()


def test_baselines_reject_words_outside_the_vocabulary():
    with pytest.raises(BaselineError, match="dragon"):
        colour_prior_maps(torch.zeros(3, 2, 2), ["dragon"])
    with pytest.raises(MethodError, match="dragon"):
        get_method("layout-prior").compute_maps(None, [MapRequest(_sample(HAND_MADE).pil(), ("dragon",))])


def test_v2_palette_makes_the_colour_prior_ambiguous():
    purple = torch.tensor(PALETTE["purple"]).view(3, 1, 1)
    v1 = colour_prior_maps(purple, ["sun", "house"], "v1")[:, 0, 0].tolist()
    v2 = colour_prior_maps(purple, ["sun", "house"], "v2")[:, 0, 0].tolist()
    assert v1[1] > v1[0] and v2[0] == pytest.approx(v2[1], abs=1e-5)  # v2: a purple sun exists


# ----- scene statistics ---------------------------------------------------------------------------------------------


def test_perfect_maps_score_one_everywhere():
    samples = list(ShapesWorldDataset("test", seed=0, n=3))
    rows = []
    for sample in samples:
        sets = protocol_concept_sets(sample)
        truth = {s.name: torch.stack([sample.concept_mask(c).float() for c in s.concepts]) for s in sets}
        rows.append(scene_stats(truth, sets, sample))
    metrics = compute_metrics(rows, resamples=50)
    for key in ("object.auroc", "background.auroc", "colour.auroc", "object.argmax_iou", "names.pixel_accuracy"):
        assert metrics[key]["value"] == pytest.approx(1.0), key
    assert metrics["names.absent_share"]["value"] == 0.0


def test_protocol_concept_sets_follow_the_issue_protocol():
    sample = ShapesWorldDataset("test", seed=0, n=5)[4]
    names, colours = protocol_concept_sets(sample, num_distractors=2)
    objects = len(sample.object_concepts)
    assert names.concepts[:objects] == sample.object_concepts
    assert names.concepts[-2:] == sample.background_concepts and len(names.concepts) == objects + 4
    assert all(kind == "object" for kind in names.kinds[: objects + 2])
    assert colours.scored == sample.colour_concepts and colours.concepts[-2:] == sample.background_concepts


# ----- bootstrap ---------------------------------------------------------------------------------------------------


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_scenes():
    rng = np.random.default_rng(1)

    def width(num_scenes: int) -> float:
        rows = [{"names.correct": float(rng.binomial(100, 0.7)), "names.pixels": 100.0} for _ in range(num_scenes)]
        entry = compute_metrics(rows, resamples=500)["names.pixel_accuracy"]
        assert entry["low"] <= entry["value"] <= entry["high"]
        return entry["high"] - entry["low"]

    small, large = width(20), width(500)
    assert large < small / 3  # ~ 1 / sqrt(25)
    expected = 2 * 1.96 * np.sqrt(0.7 * 0.3 / (100 * 500))  # binomial standard error of the pooled rate
    assert 0.7 * expected < large < 1.3 * expected


def test_bootstrap_is_seeded_and_weights_are_resamples():
    weights = resample_weights(7, resamples=30, seed=3)
    assert (weights.sum(axis=1) == 7).all() and np.array_equal(weights, resample_weights(7, resamples=30, seed=3))
    stats = {"x": np.arange(7.0), "n": np.ones(7)}
    first = bootstrap_metric(stats, lambda s: s["x"] / s["n"], resamples=100, seed=0)
    assert first == bootstrap_metric(stats, lambda s: s["x"] / s["n"], resamples=100, seed=0)
    assert bootstrap_metric({"x": np.zeros(3), "n": np.zeros(3)}, lambda s: s["x"] / s["n"]) == (None, None, None)


# ----- runner and command line -------------------------------------------------------------------------------------


def test_run_per_kind_resumes_and_refuses_another_configuration(tmp_path):
    data = ShapesWorldDataset("test", seed=0, n=3)
    methods = [get_method("colour-prior"), get_method("layout-prior")]
    out = tmp_path / "run"
    first = run_per_kind(None, data, methods, out, resamples=100, progress=False)
    lines = (out / "scenes-colour-prior.jsonl").read_text().splitlines()
    assert len(lines) == 3 and set(first["metrics"]) == {"colour-prior", "layout-prior"}
    again = run_per_kind(None, data, methods, out, resamples=100, resume=True, progress=False)
    assert again["metrics"] == first["metrics"]
    assert (out / "scenes-colour-prior.jsonl").read_text().splitlines() == lines  # nothing recomputed
    with pytest.raises(Exception, match="another configuration"):
        run_per_kind(None, data, methods[:1], out, resume=True, progress=False)
    with pytest.raises(Exception, match="already exists"):
        run_per_kind(None, data, methods, out, progress=False)


def test_evaluate_per_kind_end_to_end_with_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "per-kind"
    argv = ["evaluate", "--dataset", "shapesworld", "--data", "test:2", "--protocol", "per-kind", "--method",
            "conceptattention", "--also", "cross-attention", "colour-prior", "layout-prior", "all-background",
            "--device", "cpu", "--no-progress", "--bootstrap", "200", "--out", str(out)]  # fmt: skip
    assert cli_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["metrics"]) == ["conceptattention", "cross-attention", "colour-prior", "layout-prior",
                                       "all-background"]  # fmt: skip
    assert report["config"]["data"]["version"] == "v1"  # the shipped model's data version
    assert report["config"]["methods"]["conceptattention"]["noise_level"] is None  # the model's recommended levels
    for metrics in report["metrics"].values():
        entry = metrics["object.auroc"]
        assert entry["low"] <= entry["value"] <= entry["high"]
    assert "object AUROC" in (out / "report.md").read_text()
    assert "colour-prior" in capsys.readouterr().out


def test_evaluate_per_kind_bad_inputs_leave_nothing(tmp_path, capsys):
    out = tmp_path / "nothing"
    base = ["evaluate", "--protocol", "per-kind", "--device", "cpu", "--out", str(out)]
    assert cli_main([*base, "--dataset", "voc", "--data", str(tmp_path)]) == 2
    assert cli_main([*base, "--dataset", "shapesworld", "--method", "no-such-method"]) == 2
    assert cli_main(["evaluate", "--dataset", "shapesworld", "--also", "colour-prior", "--out", str(out)]) == 2
    assert not out.exists()
    assert "per-kind" in capsys.readouterr().err


def test_baselines_run_in_the_standard_runner_without_a_model(tmp_path):
    from conceptattention.evaluation import build_dataset, evaluate

    dataset = build_dataset("shapesworld", "test:3")
    colour = evaluate(None, dataset, get_method("colour-prior"), tmp_path / "colour", progress=False)
    layout = evaluate(None, dataset, get_method("layout-prior"), tmp_path / "layout", progress=False)
    assert colour["metrics"]["multiclass"]["pixel_accuracy"] > 0.9
    assert layout["metrics"]["multiclass"]["pixel_accuracy"] < colour["metrics"]["multiclass"]["pixel_accuracy"]


def test_colour_alone_wins_on_v1_but_not_on_v2():
    def metrics(version: str, name: str):
        return _metrics_of(name, list(ShapesWorldDataset("test", seed=0, n=40, version=version)), version)

    v1, v2 = metrics("v1", "colour-prior"), metrics("v2", "colour-prior")
    assert v1["object.auroc"]["value"] > 0.95 and v1["names.pixel_accuracy"]["value"] > 0.9
    assert v2["object.auroc"]["high"] < 0.9 and v2["names.pixel_accuracy"]["high"] < 0.75
    layout_v1, layout_v2 = metrics("v1", "layout-prior"), metrics("v2", "layout-prior")
    assert layout_v2["names.pixel_accuracy"]["value"] < layout_v1["names.pixel_accuracy"]["value"] - 0.04
