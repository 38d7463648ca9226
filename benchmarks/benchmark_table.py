"""Markdown tables for docs/benchmarks.md from ``overhead.py --json`` results (one file per run, or a bundle).

Usage:
    python benchmarks/benchmark_table.py runs/*.json                       # the markdown on stdout
    python benchmarks/benchmark_table.py runs/*.json --bundle all.json --markdown table.md

``--bundle`` writes every run into one JSON list (what ``scripts/gpu_bench.sh`` brings back from the GPU); a bundle
is also accepted as input. The tables give, per run, the medians with and without maps and their ratio against the
issue 12 targets (eager full forward <= 1.015, explain path <= 1.035, compiled vs compiled <= 1.02, peak memory
<= 1.01), the profiler's kernel time and launches, bit-identity, and the command that produced each number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


TARGETS = {"full": 1.015, "explain": 1.035, "compiled": 1.02, "memory": 1.01}


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Runs from files holding one run (a JSON object) or a bundle (a JSON list), in the order given."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        runs.extend(data if isinstance(data, list) else [data])
    for run in runs:
        if not isinstance(run, dict) or "family" not in run or "command" not in run:
            raise ValueError(f"Not an overhead.py result: {str(run)[:80]!r}")
    return runs


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def _ratio(value: float | None, target: float | None) -> str:
    if value is None:
        return "—"
    if target is None:
        return f"{value:.3f}"
    return f"**{value:.3f}**" + (" ✓" if value <= target else " ✗")


def _shape(run: dict[str, Any]) -> str:
    frames = f"{run['frames']}×" if run.get("frames") else ""
    return f"{frames}{run['height']}×{run['width']}, batch {run['batch']}, {run['text_tokens']} text tok."


def _profile(run: dict[str, Any], path: str) -> str:
    profile = run.get("profile") or {}
    plain, maps = profile.get(f"{path}_plain") or {}, profile.get(f"{path}_maps") or {}
    if "kernel_ms_total" in plain and "kernel_ms_total" in maps:
        ratio = maps["kernel_ms_total"] / plain["kernel_ms_total"] if plain["kernel_ms_total"] else float("nan")
        added = maps["kernel_launches"] - plain["kernel_launches"]
        return (f"{plain['kernel_ms_total']:.1f} / {maps['kernel_ms_total']:.1f} ms ({ratio:.3f}); "
                f"{plain['kernel_launches']:,} / {maps['kernel_launches']:,} (+{added:,})")
    if "aten_ops" in plain and "aten_ops" in maps:
        return f"CPU aten ops {plain['aten_ops']:,} / {maps['aten_ops']:,}"
    return "—"


def overhead_table(runs: list[dict[str, Any]]) -> str:
    header = (
        "| family | compile | shape | path | without maps | with maps | ratio (target) | peak memory ratio | "
        "kernel time; launches (without / with) | bit-identical | run |"
    )
    lines = [header, "| " + " | ".join(["---"] * 11) + " |"]
    for index, run in enumerate(runs, 1):
        medians = run.get("median_seconds")
        if not medians:
            continue
        compiled = run.get("compile", "none") != "none"
        for path in ("full", "explain"):
            if f"{path}_plain" not in medians or f"{path}_maps" not in medians:
                continue
            target = TARGETS["compiled"] if compiled else TARGETS[path]
            memory = run.get(f"{path}_peak_memory_ratio")
            lines.append(
                f"| {run['family']} | {run.get('compiled', 'eager') if compiled else 'eager'} | {_shape(run)} | "
                f"{path} | {_ms(medians[f'{path}_plain'])} | {_ms(medians[f'{path}_maps'])} | "
                f"{_ratio(run.get(f'{path}_ratio'), target)} | {_ratio(memory, TARGETS['memory'])} | "
                f"{_profile(run, path)} | {'yes' if run.get('bit_identical') else '**no**'} | [{index}] |"
            )
    return "\n".join(lines)


def throughput_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| family | image | noise samples | images per forward | rows | time per forward | images/s | peak memory | run |",
        "| " + " | ".join(["---"] * 9) + " |",
    ]
    for index, run in enumerate(runs, 1):
        for row in run.get("throughput") or []:
            frames = f"{row['frames']}×" if row.get("frames") else ""
            if "error" in row:
                measured = f"{row['error']} | — | —"
            else:
                memory = f"{row['peak_memory_bytes'] / 1e9:.2f} GB" if "peak_memory_bytes" in row else "—"
                measured = f"{_ms(row['median_seconds'])} | {row['images_per_second']:.2f} | {memory}"
            lines.append(
                f"| {run['family']} | {frames}{row['height']}×{row['width']} | {row['samples']} | "
                f"{row['images_per_forward']} | {row['batch']} | {measured} | [{index}] |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(runs: list[dict[str, Any]]) -> str:
    """The docs section: machines and versions, the overhead table, the throughput table, the commands."""
    machines = sorted({run["hardware"] for run in runs})
    versions = sorted({", ".join(f"{k} {v}" for k, v in run["versions"].items()) for run in runs})
    parts = [
        f"Machine: {'; '.join(machines)}. Versions: {'; '.join(versions)}.",
        "",
        f"Targets: eager full forward ≤ {TARGETS['full']}, explain path ≤ {TARGETS['explain']}, compiled vs compiled "
        f"≤ {TARGETS['compiled']}, peak memory ≤ {TARGETS['memory']} (✓ met, ✗ missed). Medians of the repeats "
        "given in each command, cases interleaved in one process.",
        "",
        overhead_table(runs),
    ]
    throughput = throughput_table(runs)
    if throughput:
        parts += ["", "Explain-path throughput (maps on, early exit; bare transformer, no VAE/text encoding):", "",
                  throughput]
    parts += ["", "Commands:", ""]
    parts += [f"{index}. `{run['command']}` ({run.get('wall_seconds', 0):.0f} s)" for index, run in enumerate(runs, 1)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", type=Path, nargs="+")
    parser.add_argument("--bundle", type=Path, default=None, help="write all runs into one JSON list here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown here (else stdout)")
    args = parser.parse_args(argv)
    runs = load_runs(args.inputs)
    text = markdown(runs)
    if args.bundle is not None:
        args.bundle.write_text(json.dumps(runs, indent=1))
    if args.markdown is not None:
        args.markdown.write_text(text)
    else:
        print(text)
    return text


if __name__ == "__main__":
    main()
