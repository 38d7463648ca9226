"""Overhead of ConceptAttention: transformer forward time and peak memory with and without concept maps.

Measures, side by side in one process on one device (cases interleaved, medians of repeats), on the bare
transformer of a benchmark family (``benchmarks/families.py``: the released configs at ``--size full``, random
weights created in the target dtype on the device, inputs as the family's pipeline builds them):

* ``full``: the whole forward without maps vs with maps (``ConceptAttention(model, concept_embeds=...)``, default
  layers);
* ``explain``: the real-image path's forward, which ends inside the last selected joint block (the concept processor
  raises ``EarlyExit`` after that block's attention), against the plain forward stopped at the same point (a forward
  hook on that block's attention module, found through the adapter's ``joint_blocks``: generic over families);
* peak memory of each (CUDA), whether the output with maps is bit-identical (bitwise, NaN-safe), and with
  ``--profile`` the kernel time and kernel launches of one call of each case (``torch.profiler``; on the CPU the
  aten-op count instead);
* ``--compile regional|model``: the same compilation on both sides: ``compile_repeated_blocks`` where diffusers
  offers it, else ``torch.compile`` of every block (``regional``), or ``torch.compile(model)`` (``model``); the
  with-maps side runs compiled with the concept processors installed;
* ``--throughput``: images/s of the explain path (maps on, early exit) at the family's throughput sizes with
  ``--samples`` noise samples per image, one image per forward vs several (``--images-per-forward``).
  ``explain()`` takes one image per call (its batch is the noise samples, averaged into one map), so several images
  per forward is measured as the batched transformer call such a path would make (``images × samples`` rows).

Usage:
    python benchmarks/overhead.py --family flux-schnell --size tiny            # CPU, seconds
    python benchmarks/overhead.py --preset tiny                                # alias of the line above
    python benchmarks/overhead.py --family flux-dev --size full --device cuda --repeats 10 --profile --json dev.json
    python benchmarks/overhead.py --family flux-schnell --size full --device cuda --compile regional --json c.json
    python benchmarks/overhead.py --family flux-schnell --size full --device cuda --throughput --no-overhead

Targets (issue 12, docs/benchmarks.md): eager full forward <= 1.015, explain path <= 1.035, compiled vs compiled
<= 1.02, peak memory <= 1.01.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from families import FAMILIES, build_transformer, concept_width, make_inputs  # noqa: E402

from conceptattention import ConceptAttention  # noqa: E402
from conceptattention.session import EarlyExit  # noqa: E402


#: ``--preset`` (the script's former option) -> (family, size)
PRESETS = {"tiny": ("flux-schnell", "tiny"), "flux-schnell": ("flux-schnell", "full")}
CASES = ("full_plain", "full_maps", "explain_plain", "explain_maps")


class _StopHere(Exception):
    """Raised by the plain explain baseline's hook where the concept processor raises ``EarlyExit``."""


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def versions() -> dict[str, str]:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN-safe, unlike ``torch.equal``: random full-size weights may overflow).

    Example:
        >>> x = torch.tensor([1.0, float("nan")])
        >>> bitwise_equal(x, x.clone()), torch.equal(x, x.clone())
        (True, False)
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


class StopSwitch:
    """Plain explain baseline: a forward hook on the last selected block's attention module, registered once for
    the whole measurement (so that compiled code sees one hook, not a new one per case), that raises
    :class:`_StopHere` right after that module returns (where the concept processor raises ``EarlyExit``) while
    the switch is on. Used as a context manager, it is on inside the ``with`` block.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> switch = StopSwitch(layer)
        >>> with switch:
        ...     run_case(lambda: layer(torch.zeros(2)), _StopHere)
        >>> switch.remove()
    """

    def __init__(self, attention_module: nn.Module) -> None:
        self.on = False
        self._handle = attention_module.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        if self.on:
            raise _StopHere()

    def __enter__(self) -> StopSwitch:
        self.on = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.on = False

    def remove(self) -> None:
        self._handle.remove()


def compile_model(model: nn.Module, how: str, backend: str, mode: str | None) -> tuple[nn.Module, str]:
    """Compile ``model`` for both sides; returns (what to call, what was done)."""
    options: dict[str, Any] = {"backend": backend}
    if mode:
        options["mode"] = mode
    if how == "none":
        return model, "eager"
    if how == "model":
        return torch.compile(model, **options), "torch.compile(model)"
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**options)
        return model, f"compile_repeated_blocks ({', '.join(model._repeated_blocks)})"
    compiled = []
    for name, child in model.named_children():  # every block list: transformer_blocks, single_transformer_blocks...
        if isinstance(child, nn.ModuleList):
            for block in child:
                block.compile(**options)
            compiled.append(name)
    return model, f"torch.compile per block ({', '.join(compiled)})"


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return elapsed, peak


def profile_call(fn: Callable[[], Any], device: torch.device, top: int = 15) -> dict[str, Any]:
    """Kernel time and kernel launches of one call (CUDA), or aten ops and CPU time (CPU), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        fn()
        synchronize(device)
    averages = prof.key_averages()
    if device.type != "cuda":
        ops = [event for event in averages if event.key.startswith("aten::")]
        return {
            "unit": "aten ops (CPU)",
            "aten_ops": sum(event.count for event in ops),
            "cpu_ms_total": round(sum(event.self_cpu_time_total for event in ops) / 1000, 3),
        }
    rows, total_us, kernels = [], 0.0, 0
    launch_calls = 0
    for event in averages:
        if event.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC"):
            launch_calls += event.count
        device_us = getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0)
        if device_us <= 0 or event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        total_us += device_us
        kernels += event.count
        rows.append({"kernel": event.key[:100], "count": event.count, "device_ms": round(device_us / 1000, 3)})
    rows.sort(key=lambda row: -row["device_ms"])
    return {
        "unit": "CUDA kernels",
        "kernel_ms_total": round(total_us / 1000, 3),
        "kernel_launches": kernels,
        "launch_api_calls": launch_calls,
        "top": rows[:top],
    }


def dynamo_stats() -> dict[str, Any]:
    counters = torch._dynamo.utils.counters
    breaks = dict(counters["graph_break"])
    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": sorted(breaks, key=lambda reason: -breaks[reason])[:5],
    }


def run_case(fn: Callable[[], Any], expected: type[BaseException] | None) -> None:
    try:
        fn()
    except BaseException as error:  # the explain cases end by an exception, at the same point on both sides
        if expected is None or not isinstance(error, expected):
            raise


def measure_overhead(args: argparse.Namespace, model: nn.Module, call: nn.Module, embeds: torch.Tensor) -> dict:
    device = torch.device(args.device)
    inputs = make_inputs(args.family, args.size, model, device, model.dtype, height=args.height, width=args.width,
                         text_tokens=args.text_tokens)
    options = {"layers": args.layers} if args.layers else {}
    attention = ConceptAttention(call, concept_embeds=embeds, **options)
    explain_attention = ConceptAttention(call, concept_embeds=embeds, **options)
    explain_attention._stop_after_last_layer = True
    last = attention.layers[-1]
    switch = StopSwitch(attention.adapter.attention_module(attention.adapter.joint_blocks(model)[last]))
    try:
        return _measure_overhead(args, call, inputs, attention, explain_attention, switch)
    finally:
        switch.remove()


def _measure_overhead(
    args: argparse.Namespace,
    call: nn.Module,
    inputs: dict[str, Any],
    attention: ConceptAttention,
    explain_attention: ConceptAttention,
    switch: StopSwitch,
) -> dict[str, Any]:
    device = torch.device(args.device)

    def forward() -> torch.Tensor:
        return call(**inputs)[0]

    all_cases: dict[str, tuple[Callable[[], AbstractContextManager[Any]], type[BaseException] | None]] = {
        "full_plain": (nullcontext, None),
        "full_maps": (lambda: attention, None),
        "explain_plain": (lambda: switch, _StopHere),
        "explain_maps": (lambda: explain_attention, EarlyExit),
    }
    cases = {name: all_cases[name] for name in CASES if name in args.cases}
    result: dict[str, Any] = {"layers": list(attention.layers)}
    with torch.no_grad():
        start = time.perf_counter()
        reference = forward()
        synchronize(device)
        result["first_call_seconds"] = {"full_plain": time.perf_counter() - start}
        start = time.perf_counter()
        with attention:
            with_maps = forward()
        synchronize(device)
        result["first_call_seconds"]["full_maps"] = time.perf_counter() - start
        result["bit_identical"] = bitwise_equal(reference, with_maps)
        result["output_finite"] = bool(torch.isfinite(reference).all())
        warmup = max(args.warmup, 1 if args.compile != "none" else 0)  # compiled: never time a compilation
        for _ in range(warmup):
            for context, expected in cases.values():
                with context():
                    run_case(forward, expected)
        times: dict[str, list[float]] = {name: [] for name in cases}
        peaks: dict[str, int] = dict.fromkeys(cases, 0)
        for _ in range(args.repeats):
            for name, (context, expected) in cases.items():  # interleaved, so drift affects all cases alike
                with context():
                    elapsed, peak = timed(lambda: run_case(forward, expected), device)  # noqa: B023
                times[name].append(elapsed)
                peaks[name] = max(peaks[name], peak)
        install = []
        for _ in range(max(args.repeats, 3)):
            start = time.perf_counter()
            with attention:
                pass
            install.append(time.perf_counter() - start)
        with attention:
            again = forward()
        result["bit_identical"] = result["bit_identical"] and bitwise_equal(reference, again)
        if args.profile:
            result["profile"] = {}
            for name, (context, expected) in cases.items():
                try:
                    with context():
                        result["profile"][name] = profile_call(lambda: run_case(forward, expected), device)  # noqa: B023
                except Exception as error:  # the profile is extra information; never lose the timings for it
                    result["profile"][name] = {"error": repr(error)}
    medians = {name: statistics.median(values) for name, values in times.items()}
    result.update(
        {
            "inputs": {key: list(value.shape) for key, value in inputs.items() if isinstance(value, torch.Tensor)},
            "warmup": warmup,
            "install_and_restore_seconds": statistics.median(install),
            "median_seconds": medians,
            "seconds": times,
        }
    )
    if device.type == "cuda":
        result["peak_memory_bytes"] = peaks
    for path in ("full", "explain"):
        if f"{path}_plain" in cases and f"{path}_maps" in cases:
            result[f"{path}_ratio"] = medians[f"{path}_maps"] / medians[f"{path}_plain"]
            if device.type == "cuda":
                result[f"{path}_peak_memory_ratio"] = peaks[f"{path}_maps"] / peaks[f"{path}_plain"]
    return result


def measure_throughput(args: argparse.Namespace, model: nn.Module, call: nn.Module, embeds: torch.Tensor) -> list:
    """Images/s of the explain path (maps on, early exit) per size and images per forward."""
    device = torch.device(args.device)
    spec = FAMILIES[args.family].size(args.size)
    options = {"layers": args.layers} if args.layers else {}
    rows = []
    for height, width in spec.throughput_sizes:
        for images in args.images_per_forward:
            row: dict[str, Any] = {
                "height": height, "width": width, "frames": spec.frames, "samples": args.samples,
                "images_per_forward": images, "batch": images * args.samples,
            }
            try:
                inputs = make_inputs(args.family, args.size, model, device, model.dtype, batch=images * args.samples,
                                     height=height, width=width, text_tokens=args.text_tokens)
                attention = ConceptAttention(call, concept_embeds=embeds, **options)
                attention._stop_after_last_layer = True

                def explain_forward(inputs: dict[str, Any] = inputs) -> None:
                    run_case(lambda: call(**inputs), EarlyExit)

                times, peak = [], 0
                with torch.no_grad(), attention:
                    for _ in range(max(args.warmup, 1)):
                        explain_forward()
                    for _ in range(args.repeats):
                        elapsed, used = timed(explain_forward, device)
                        times.append(elapsed)
                        peak = max(peak, used)
                median = statistics.median(times)
                row.update({"median_seconds": median, "images_per_second": images / median, "seconds": times})
                if device.type == "cuda":
                    row["peak_memory_bytes"] = peak
            except torch.OutOfMemoryError as error:
                row["error"] = f"out of memory: {str(error).splitlines()[0]}"
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps({key: value for key, value in row.items() if key != "seconds"}), flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default=None)
    parser.add_argument("--size", choices=["tiny", "full"], default=None)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="former option: tiny = --family flux-schnell --size tiny; flux-schnell = ... --size full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 at full size, float32 at tiny size")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--text-tokens", type=int, default=None)
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--layers", type=int, nargs="+", default=None, help="joint blocks (default: the family's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", choices=CASES, nargs="+", default=list(CASES), help="what to time (default: all)")
    parser.add_argument("--compile", choices=["none", "regional", "model"], default="none")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (CPU checks: aot_eager)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--profile", action="store_true", help="kernel time / launches of one call of each case")
    parser.add_argument("--throughput", action="store_true", help="images/s of the explain path")
    parser.add_argument("--no-overhead", action="store_true", help="skip the with/without-maps timings")
    parser.add_argument("--samples", type=int, default=4, help="noise samples per image (throughput)")
    parser.add_argument("--images-per-forward", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.preset is not None:
        family, size = PRESETS[args.preset]
        if (args.family or family) != family or (args.size or size) != size:
            parser.error(f"--preset {args.preset} means --family {family} --size {size}.")
        args.family, args.size = family, size
    args.family = args.family or "flux-schnell"
    args.size = args.size or "tiny"
    if args.repeats < 1 or args.warmup < 0 or args.concepts < 1 or args.samples < 1:
        parser.error("--repeats, --concepts and --samples must be positive, --warmup non-negative.")
    if args.no_overhead and not args.throughput:
        parser.error("--no-overhead leaves nothing to measure without --throughput.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.size == "full" else "float32"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()

    start = time.perf_counter()
    model = build_transformer(args.family, args.size, device, dtype)
    synchronize(device)
    build_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(args.concepts, concept_width(model), generator=generator).to(device=device, dtype=dtype)
    call, compiled = compile_model(model, args.compile, args.compile_backend, args.compile_mode)
    spec = FAMILIES[args.family].size(args.size)
    argv_used = list(sys.argv[1:] if argv is None else argv)
    if "--json" in argv_used:  # where this run's file went is no part of the command that made the numbers
        del argv_used[argv_used.index("--json") : argv_used.index("--json") + 2]
    result: dict[str, Any] = {
        "family": args.family,
        "size": args.size,
        "command": "python benchmarks/overhead.py " + shlex.join(argv_used),
        "hardware": hardware(device),
        "device": device.type,
        "versions": versions(),
        "dtype": str(dtype).replace("torch.", ""),
        "transformer": type(model).__name__,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "joint_blocks": len(ConceptAttention(model, concept_embeds=embeds).adapter.joint_blocks(model)),
        "height": args.height or spec.height,
        "width": args.width or spec.width,
        "frames": spec.frames,
        "text_tokens": args.text_tokens or spec.text_tokens,
        "batch": spec.cfg_batch,
        "concepts": args.concepts,
        "repeats": args.repeats,
        "compile": args.compile,
        "compiled": compiled,
        "compile_backend": args.compile_backend if args.compile != "none" else None,
        "compile_mode": args.compile_mode,
        "build_seconds": build_seconds,
    }
    if not args.no_overhead:
        result.update(measure_overhead(args, model, call, embeds))
    if args.throughput:
        result["throughput"] = measure_throughput(args, model, call, embeds)
    if args.compile != "none":
        result["compile_stats"] = dynamo_stats()
    result["wall_seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=2)
    print(json.dumps({key: value for key, value in result.items() if key not in ("seconds", "profile")}, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return result


if __name__ == "__main__":
    main()
