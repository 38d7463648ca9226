"""Per-block cost of the concept branch on FLUX.1: aten ops, host time and peak memory, for one ``conceptattention``.

Issue 11's capture trial: the concept branch either re-implements diffusers' ``FluxAttnProcessor`` (the design up to
b920b3e) or lets the stock processor run untouched and takes the image keys/values/outputs from it (the current
design). Run this script once per source tree and compare the JSON outputs::

    git archive b920b3e src | tar -x -C /tmp/old        # the copied-processor design
    OMP_NUM_THREADS=1 python benchmarks/capture_trial.py --src /tmp/old/src --json old.json
    OMP_NUM_THREADS=1 python benchmarks/capture_trial.py --json new.json
    python benchmarks/capture_trial.py --compare old.json new.json

``--family flux`` (default) is a small-but-not-tiny FLUX.1 (6 double blocks, 8 heads × 32, 1024 image tokens);
``--family sd3|cogvideox|chroma|flux2|qwenimage|hunyuan_video|auraflow`` use the library's tiny test models (their
per-block numbers are host overhead: what matters on a GPU, where the concept branch is launch-bound).

Every joint block runs the concept branch (``layers`` = all joint blocks), so "per block" is
``(with maps - without maps) / number of joint blocks``. Measured on the CPU with ``torch.profiler``:

* ``aten_ops``: aten operator calls per forward (nested calls included) — the CPU analogue of kernel launches;
* ``median_ms`` / ``median_cpu_ms``: wall / process CPU time per forward, medians of interleaved repeats (CPU time
  is less disturbed by other processes on a shared machine);
* ``peak_bytes``: peak of the profiler's CPU allocation timeline during one forward.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


CONFIG = dict(
    num_layers=6, num_single_layers=2, attention_head_dim=32, num_attention_heads=8, joint_attention_dim=256,
    pooled_projection_dim=64, in_channels=16, axes_dims_rope=(8, 12, 12),
)


def build_inputs(model: Any, grid: int, text_tokens: int) -> dict[str, Any]:
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, grid * grid, model.config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, text_tokens, model.config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, model.config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, grid, grid, "cpu", torch.float32),
        "txt_ids": torch.zeros(text_tokens, 3),
        "return_dict": False,
    }


def profile_forward(fn: Any) -> tuple[int, int]:
    """(aten operator calls, peak CPU bytes allocated above the start) of one call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.events()
    ops = sum(1 for event in events if event.name.startswith("aten::"))
    # allocations are attributed to the operator that made them (self memory), frees outside one to "[memory]"
    memory = sorted(
        (event.time_range.start, event.self_cpu_memory_usage) for event in events if event.self_cpu_memory_usage
    )
    running = peak = 0
    for _, delta in memory:
        running += delta
        peak = max(peak, running)
    return ops, peak


def build_family(family: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any], int]:
    """(model, inputs, concept embedding width) of a benchmark family."""
    if family == "flux":
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(0)
        model = FluxTransformer2DModel(patch_size=1, **CONFIG).eval().requires_grad_(False)
        return model, build_inputs(model, args.grid, args.text_tokens), CONFIG["joint_attention_dim"]
    from conceptattention import testing

    factories = {
        "sd3": (testing.tiny_sd3_transformer, lambda model: testing.tiny_sd3_inputs(), 48),
        "cogvideox": (testing.tiny_cogvideox_transformer, testing.tiny_cogvideox_inputs, 32),
        "chroma": (testing.tiny_chroma_transformer, lambda model: testing.tiny_chroma_inputs(), 32),
        "flux2": (testing.tiny_flux2_transformer, lambda model: testing.tiny_flux2_inputs(), 24),
        "qwenimage": (testing.tiny_qwenimage_transformer, lambda model: testing.tiny_qwenimage_inputs(), 16),
        "hunyuan_video": (
            testing.tiny_hunyuan_video_transformer,
            lambda model: testing.tiny_hunyuan_video_inputs(),
            16,
        ),
        "auraflow": (testing.tiny_auraflow_transformer, lambda model: testing.tiny_auraflow_inputs(), 32),
        "flux-tiny": (testing.tiny_flux_transformer, lambda model: testing.tiny_flux_inputs(), 32),
    }
    build, inputs, width = factories[family]
    model = build(num_layers=4)
    return model, inputs(model), width


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.src is not None:
        sys.path.insert(0, str(args.src))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import conceptattention
    from conceptattention import ConceptAttention, get_adapter

    model, inputs, width = build_family(args.family, args)
    embeds = torch.randn(args.concepts, width, generator=torch.Generator().manual_seed(1))
    blocks = len(get_adapter(model).joint_blocks(model))
    attention = ConceptAttention(model, concept_embeds=embeds, layers=list(range(blocks)), softmax=False)

    def forward() -> torch.Tensor:
        output = model(**inputs)
        return output[0] if isinstance(output, tuple) else output.sample

    with torch.no_grad():
        reference = forward()
        with attention:
            identical = torch.equal(reference, forward())
        logits = attention.maps.logits
        for _ in range(args.warmup):
            forward()
            with attention:
                forward()
        times: dict[str, list[float]] = {"plain": [], "maps": []}
        cpu_times: dict[str, list[float]] = {"plain": [], "maps": []}
        for _ in range(args.repeats):
            for name in ("plain", "maps"):
                with attention if name == "maps" else contextlib.nullcontext():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    forward()
                    times[name].append(time.perf_counter() - start)
                    cpu_times[name].append(time.process_time() - cpu_start)
        ops_plain, peak_plain = profile_forward(forward)
        with attention:
            ops_maps, peak_maps = profile_forward(forward)
    median = {name: statistics.median(values) * 1000 for name, values in times.items()}
    cpu_median = {name: statistics.median(values) * 1000 for name, values in cpu_times.items()}
    return {
        "source": str(Path(conceptattention.__file__).parent),
        "family": args.family,
        "joint_blocks": blocks,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": CONFIG if args.family == "flux" else "tiny test model, 4 joint blocks",
        "concepts": args.concepts,
        "repeats": args.repeats,
        "bit_identical": identical,
        "logits_sum": float(logits.double().sum()),
        "logits_sha256": hashlib.sha256(logits.contiguous().numpy().tobytes()).hexdigest(),  # bitwise map identity
        "median_ms": median,
        "median_cpu_ms": cpu_median,
        "aten_ops": {"plain": ops_plain, "maps": ops_maps},
        "peak_bytes": {"plain": peak_plain, "maps": peak_maps},
        "per_block": {
            "ms": (median["maps"] - median["plain"]) / blocks,
            "cpu_ms": (cpu_median["maps"] - cpu_median["plain"]) / blocks,
            "aten_ops": (ops_maps - ops_plain) / blocks,
            "peak_bytes": (peak_maps - peak_plain),
        },
    }


def compare(paths: list[Path]) -> None:
    rows = [json.loads(path.read_text()) for path in paths]
    print(f"{'family':14} {'source':40} {'ms/fwd plain':>12} {'ms/fwd maps':>12} {'+ms/block':>10} {'+cpu ms/block':>13} "
          f"{'+ops/block':>10} {'peak MB plain':>13} {'peak MB maps':>12}")
    for row in rows:
        print(
            f"{row.get('family', 'flux'):14} {row['source'][-40:]:40} {row['median_ms']['plain']:12.2f} {row['median_ms']['maps']:12.2f} "
            f"{row['per_block']['ms']:10.3f} {row['per_block'].get('cpu_ms', float('nan')):13.3f} "
            f"{row['per_block']['aten_ops']:10.1f} "
            f"{row['peak_bytes']['plain'] / 2**20:13.2f} {row['peak_bytes']['maps'] / 2**20:12.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=None, help="source tree holding the conceptattention package")
    parser.add_argument(
        "--family",
        default="flux",
        choices=["flux", "flux-tiny", "sd3", "cogvideox", "chroma", "flux2", "qwenimage", "hunyuan_video", "auraflow"],
    )
    parser.add_argument("--grid", type=int, default=32, help="image token grid side (32: 1024 tokens, 512² images)")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--concepts", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare", type=Path, nargs="+", default=None, help="print a table of earlier JSON results")
    args = parser.parse_args(argv)
    if args.compare:
        compare(args.compare)
        return
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
