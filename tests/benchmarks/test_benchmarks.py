"""benchmarks/: overhead.py at tiny size for every family (JSON fields, bit-identity, explain throughput, compiled
with maps), launch_count.py, and benchmark_table.py on those results."""

from __future__ import annotations

import doctest
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

families = importlib.import_module("families")
overhead = importlib.import_module("overhead")
launch_count = importlib.import_module("launch_count")
benchmark_table = importlib.import_module("benchmark_table")

FAMILIES = ["flux-schnell", "flux-dev", "sd3.5-large", "cogvideox-5b", "qwen-image"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny CPU run per family (the first also profiled and with the explain throughput), written as JSON."""
    folder = tmp_path_factory.mktemp("overhead")
    paths = {}
    for family in FAMILIES:
        extra = ["--profile", "--throughput", "--images-per-forward", "1", "2"] if family == "flux-schnell" else []
        paths[family] = folder / f"{family}.json"
        overhead.main(["--family", family, "--size", "tiny", "--repeats", "1", "--warmup", "0", *extra,
                       "--json", str(paths[family])])  # fmt: skip
    return paths


def test_the_families_are_the_released_architectures() -> None:
    assert sorted(families.FAMILIES) == sorted(FAMILIES)
    flux = families.FAMILIES["flux-schnell"].full.config
    assert (flux["num_layers"], flux["num_single_layers"], flux["num_attention_heads"] * flux["attention_head_dim"]) == (
        19, 38, 3072
    )
    assert families.FAMILIES["flux-dev"].full.config["guidance_embeds"] is True
    assert families.FAMILIES["sd3.5-large"].full.config["num_layers"] == 38
    assert families.FAMILIES["sd3.5-large"].full.cfg_batch == 2
    cog = families.FAMILIES["cogvideox-5b"].full
    assert (cog.frames, cog.height, cog.width, cog.cfg_batch, cog.config["num_layers"]) == (49, 480, 720, 2, 42)
    assert families.FAMILIES["qwen-image"].full.config["num_layers"] == 60


@pytest.mark.parametrize("family", FAMILIES)
def test_overhead_json_per_family(runs: dict[str, Path], family: str) -> None:
    result = json.loads(runs[family].read_text())
    assert result["family"] == family and result["size"] == "tiny" and result["compile"] == "none"
    assert result["bit_identical"] is True and result["output_finite"] is True
    assert set(result["median_seconds"]) == {"full_plain", "full_maps", "explain_plain", "explain_maps"}
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())
    assert result["full_ratio"] == pytest.approx(
        result["median_seconds"]["full_maps"] / result["median_seconds"]["full_plain"]
    )
    assert result["explain_ratio"] > 0
    assert result["layers"] and max(result["layers"]) < result["joint_blocks"]
    assert result["versions"]["diffusers"] and result["dtype"] == "float32"
    assert result["command"].startswith(f"python benchmarks/overhead.py --family {family}")
    assert "--json" not in result["command"]
    assert "peak_memory_bytes" not in result  # CUDA only
    batch = families.FAMILIES[family].tiny.cfg_batch
    assert result["batch"] == batch and result["inputs"]["hidden_states"][0] == batch


def test_explain_path_stops_where_the_concept_processor_does() -> None:
    """The plain explain baseline ends right after the last selected block's attention (nothing later runs)."""
    import torch

    from conceptattention import ConceptAttention

    model = families.build_transformer("flux-schnell", "tiny", torch.device("cpu"), torch.float32)
    inputs = families.make_inputs("flux-schnell", "tiny", model, torch.device("cpu"), torch.float32)
    attention = ConceptAttention(model, concept_embeds=torch.randn(3, families.concept_width(model)))
    blocks = attention.adapter.joint_blocks(model)
    last = attention.layers[-1]
    ran: list[str] = []
    handles = [blocks[last].ff.register_forward_hook(lambda *args: ran.append("ff of the last block"))]
    handles.append(model.norm_out.register_forward_hook(lambda *args: ran.append("norm_out")))
    switch = overhead.StopSwitch(attention.adapter.attention_module(blocks[last]))
    try:
        with torch.no_grad(), switch, pytest.raises(overhead._StopHere):
            model(**inputs)
        assert ran == []
        with torch.no_grad():
            model(**inputs)  # switched off: the whole forward
        assert ran == ["ff of the last block", "norm_out"]
    finally:
        switch.remove()
        for handle in handles:
            handle.remove()


def test_profile_and_throughput(runs: dict[str, Path]) -> None:
    result = json.loads(runs["flux-schnell"].read_text())
    profile = result["profile"]
    assert set(profile) == {"full_plain", "full_maps", "explain_plain", "explain_maps"}
    assert profile["full_maps"]["aten_ops"] > profile["full_plain"]["aten_ops"] > 0  # the concept branch's ops
    rows = result["throughput"]
    sizes = families.FAMILIES["flux-schnell"].tiny.throughput_sizes
    assert [(row["height"], row["width"], row["images_per_forward"]) for row in rows] == [
        (height, width, images) for height, width in sizes for images in (1, 2)
    ]
    for row in rows:
        assert row["batch"] == row["images_per_forward"] * 4
        assert row["images_per_second"] == pytest.approx(row["images_per_forward"] / row["median_seconds"])


def test_compiled_with_maps_stays_bit_identical(tmp_path: Path) -> None:
    """Regional compilation (per-block torch.compile: diffusers offers no compile_repeated_blocks for CogVideoX) on
    both sides; the with-maps side runs compiled with the concept processors installed."""
    result = overhead.main(["--family", "cogvideox-5b", "--size", "tiny", "--repeats", "1", "--warmup", "0",
                            "--compile", "regional", "--compile-backend", "eager", "--cases", "full_plain",
                            "full_maps"])  # fmt: skip
    assert result["compiled"] == "torch.compile per block (transformer_blocks)"
    assert result["bit_identical"] is True
    assert set(result["median_seconds"]) == {"full_plain", "full_maps"} and "explain_ratio" not in result
    assert result["warmup"] == 1  # a compiled run never times its compilation
    assert result["compile_stats"]["unique_graphs"] >= 2 and result["compile_stats"]["graph_breaks"] == 0


def test_preset_alias_and_bad_options() -> None:
    args = overhead.parse_args(["--preset", "tiny"])
    assert (args.family, args.size) == ("flux-schnell", "tiny")
    assert (overhead.parse_args(["--preset", "flux-schnell"]).size) == "full"
    for bad in (["--preset", "tiny", "--family", "flux-dev"], ["--repeats", "0"], ["--no-overhead"]):
        with pytest.raises(SystemExit):
            overhead.parse_args(bad)


def test_benchmark_table(runs: dict[str, Path], tmp_path: Path) -> None:
    bundle, table = tmp_path / "bench.json", tmp_path / "table.md"
    text = benchmark_table.main([*map(str, runs.values()), "--bundle", str(bundle), "--markdown", str(table)])
    assert table.read_text() == text
    bundled = json.loads(bundle.read_text())
    assert [run["family"] for run in bundled] == FAMILIES
    lines = text.splitlines()
    for index, family in enumerate(FAMILIES, 1):
        rows = [line for line in lines if line.startswith(f"| {family} | eager |") and line.endswith(f"[{index}] |")]
        assert [row.split(" | ")[3] for row in rows] == ["full", "explain"], family
        run = bundled[index - 1]
        assert f"{run['full_ratio']:.3f}" in rows[0] and f"{run['explain_ratio']:.3f}" in rows[1]
        assert f"{index}. `{run['command']}`" in text
    assert "torch " in lines[0] and "diffusers 0.42" in lines[0]
    throughput = [line for line in lines if line.startswith("| flux-schnell | 64×64 |")]
    assert len(throughput) == 2
    # a bundle reads back as the same runs
    assert benchmark_table.load_runs([bundle]) == bundled
    (tmp_path / "bad.json").write_text(json.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="Not an overhead.py result"):
        benchmark_table.load_runs([tmp_path / "bad.json"])


def test_launch_count_per_block() -> None:
    row: dict[str, Any] = launch_count.measure("flux-schnell")
    assert row["joint_blocks"] == 6 and row["plain_kernels_per_block"] > 0
    per_block = row["per_block"]
    assert per_block["kernels"] > 0 and per_block["by_kind"]["gemm"] >= 7  # norm1 modulation, q/k/v, out, MLP x2
    assert per_block["by_kind"]["attention"] == 1  # one concept attention per block
    assert row["per_unselected_block"]["kernels"] < per_block["kernels"]  # unselected blocks compute no scores
    assert row["first_block"]["kernels"] > per_block["kernels"]  # the first block also embeds the concepts
    assert "| flux-schnell | 6 |" in launch_count.table([row])


@pytest.mark.parametrize("module", [families, overhead, launch_count])
def test_docstring_examples(module: Any) -> None:
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_guidance_batches_repeat_the_latents() -> None:
    """SD3.5 and CogVideoX pipelines feed ``cat([latents] * 2)`` under different prompt rows (the adapters' CFG test)."""
    import torch

    for family in ("sd3.5-large", "cogvideox-5b"):
        model = families.build_transformer(family, "tiny", torch.device("cpu"), torch.float32)
        inputs = families.make_inputs(family, "tiny", model, torch.device("cpu"), torch.float32)
        latents, text = inputs["hidden_states"], inputs["encoder_hidden_states"]
        assert latents.shape[0] == 2 and torch.equal(latents[0], latents[1]) and not torch.equal(text[0], text[1])
        samples = families.make_inputs(family, "tiny", model, torch.device("cpu"), torch.float32, batch=2)
        assert not torch.equal(samples["hidden_states"][0], samples["hidden_states"][1])  # explain: noise samples


def test_full_size_bytes_on_the_meta_device() -> None:
    found = launch_count.full_size_bytes("flux-schnell")
    assert found["layers"] == [15, 16, 17, 18] and found["selected"] is False
    assert found["kernels"] == sum(site["kernels"] for site in found["sites"]) > 0
    # the concept stream reads the text-stream weights of the block (q/k/v, out, MLP, modulation: ~340 MB in bf16)
    assert found["megabytes"] > 340
