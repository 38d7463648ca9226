"""Overhead of ConceptAttention: transformer forward time and peak memory with and without concept maps.

Measures, side by side in one process on one device (runs interleaved, medians of repeats):

* full forward (all blocks) without maps vs with maps (default layers);
* the explain path: forward up to the last selected double block, without vs with the concept stream;
* peak memory of each.

Presets:
    tiny          a small random FLUX-architecture model (CPU friendly)
    flux-schnell  the FLUX.1-schnell architecture (19 double + 38 single blocks, 3072 wide) with random weights

Usage:
    python benchmarks/overhead.py --preset tiny
    python benchmarks/overhead.py --preset flux-schnell --device cuda --dtype bfloat16 --height 1024 --width 1024 \
        --concepts 10 --repeats 10 --json results.json

Targets (docs/benchmarks.md): full size, 1024², 10 concepts, bf16: full forward ratio <= 1.01, explain path
(double blocks only) <= 1.03, peak memory +1% at most.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conceptattention import ConceptAttention  # noqa: E402
from conceptattention.session import EarlyExit  # noqa: E402


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_layers=6, num_single_layers=6, attention_head_dim=32, num_attention_heads=8, joint_attention_dim=256,
        pooled_projection_dim=64, in_channels=16, axes_dims_rope=(8, 12, 12),
    ),
    "flux-schnell": dict(
        num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
        pooled_projection_dim=768, in_channels=64, axes_dims_rope=(16, 56, 56),
    ),
}


class _StopHere(Exception):
    pass


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(preset: str, device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the target dtype (no fp32 copy of a 12B model)
    try:
        with torch.device(device):
            model = FluxTransformer2DModel(patch_size=1, **PRESETS[preset])
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(model: Any, height: int, width: int, text_tokens: int, device: torch.device, dtype: torch.dtype) -> dict:
    from diffusers import FluxPipeline

    config = model.config
    grid_h, grid_w = height // 16, width // 16  # VAE ×8, pack ×2
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, grid_h * grid_w, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, text_tokens, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]),
        "img_ids": FluxPipeline._prepare_latent_image_ids(1, grid_h, grid_w, "cpu", torch.float32),
        "txt_ids": torch.zeros(text_tokens, 3),
    }
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() and "ids" not in k else v.dtype) for k, v in inputs.items()}
    inputs["img_ids"] = inputs["img_ids"].to(dtype)
    inputs["txt_ids"] = inputs["txt_ids"].to(dtype)
    inputs["return_dict"] = False
    return inputs


@contextmanager
def stop_before_single_blocks(model: Any):
    """Baseline of the explain path: run the double blocks only (raise before the first single block)."""

    def raise_stop(*args: Any) -> None:
        raise _StopHere()

    handle = model.single_transformer_blocks[0].register_forward_pre_hook(raise_stop)
    try:
        yield
    finally:
        handle.remove()


def timed(fn: Any, device: torch.device) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return elapsed, peak


def profile_kernels(fn: Any, device: torch.device, top: int = 25) -> dict[str, Any]:
    """GPU kernel time of one call, grouped by kernel name (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(device)
    rows = []
    total_us, count = 0.0, 0
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0)
        if device_us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total_us += device_us
        count += event.count
        rows.append({"kernel": event.key[:120], "count": event.count, "device_ms": round(device_us / 1000, 3)})
    rows.sort(key=lambda row: -row["device_ms"])
    return {"kernel_ms_total": round(total_us / 1000, 3), "kernel_launches": count, "top": rows[:top]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--text-tokens", type=int, default=None)
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="CUDA kernel-time breakdown of one forward with/without maps")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    full = args.preset == "flux-schnell"
    dtype = getattr(torch, args.dtype or ("bfloat16" if full else "float32"))
    height = args.height or (1024 if full else 256)
    width = args.width or (1024 if full else 256)
    text_tokens = args.text_tokens or (512 if full else 64)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    model = build(args.preset, device, dtype)
    inputs = make_inputs(model, height, width, text_tokens, device, dtype)
    embeds = torch.randn(args.concepts, model.config.joint_attention_dim, generator=torch.Generator().manual_seed(1))
    embeds = embeds.to(device=device, dtype=dtype)
    attention = ConceptAttention(model, concept_embeds=embeds)
    explain_attention = ConceptAttention(model, concept_embeds=embeds)
    explain_attention._stop_after_last_layer = True

    def forward_plain() -> torch.Tensor:
        return model(**inputs)[0]

    def forward_maps() -> torch.Tensor:
        return model(**inputs)[0]

    def double_plain() -> None:
        try:
            model(**inputs)
        except _StopHere:
            pass

    def double_maps() -> None:
        try:
            model(**inputs)
        except EarlyExit:
            pass

    # each case: (forward, context it runs in); installing the processors is not part of the timed forward
    cases = {
        "full_plain": (forward_plain, nullcontext),
        "full_maps": (forward_maps, lambda: attention),
        "explain_plain": (double_plain, lambda: stop_before_single_blocks(model)),
        "explain_maps": (double_maps, lambda: explain_attention),
    }
    with torch.no_grad():
        reference = forward_plain()
        with attention:
            identical = torch.equal(reference, forward_maps())
        for _ in range(args.warmup):
            for fn, context in cases.values():
                with context():
                    fn()
        times: dict[str, list[float]] = {name: [] for name in cases}
        peaks: dict[str, int] = dict.fromkeys(cases, 0)
        for _ in range(args.repeats):
            for name, (fn, context) in cases.items():  # interleaved, so drift affects all cases alike
                with context():
                    elapsed, peak = timed(fn, device)
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak)
        install_seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with attention:
                pass
            install_seconds.append(time.perf_counter() - start)

    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "hardware": hardware(device),
        "preset": args.preset,
        "dtype": str(dtype).replace("torch.", ""),
        "height": height,
        "width": width,
        "image_tokens": (height // 16) * (width // 16),
        "text_tokens": text_tokens,
        "concepts": args.concepts,
        "repeats": args.repeats,
        "layers": list(attention.layers),
        "bit_identical": identical,
        "install_and_restore_seconds": statistics.median(install_seconds),
        "median_seconds": medians,
        "full_forward_ratio": medians["full_maps"] / medians["full_plain"],
        "explain_ratio": medians["explain_maps"] / medians["explain_plain"],
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = peaks
        result["full_peak_memory_ratio"] = peaks["full_maps"] / peaks["full_plain"]
        result["explain_peak_memory_ratio"] = peaks["explain_maps"] / peaks["explain_plain"]
    if args.profile and device.type == "cuda":
        try:
            result["profile"] = {}
            for name in ("full_plain", "full_maps"):
                fn, context = cases[name]
                with context():
                    result["profile"][name] = profile_kernels(fn, device)
        except Exception as error:  # the profile is extra information; never lose the timings for it
            result["profile"] = {"error": repr(error)}
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
