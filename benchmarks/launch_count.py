"""Aten ops dispatched by the concept branch, per joint block and by kind: the CPU-measurable part of issue 12 item 1.

On a GPU every aten op that is not a view or an allocation launches (at least) one kernel, and on an eager forward
the concept branch is launch-bound (docs/benchmarks.md), so the ops it dispatches per block are the kernel launches
to remove. This script counts them with a ``TorchDispatchMode`` on the CPU (what reaches the backend, below
autograd and composite ops: ``linear`` shows as ``addmm``/``mm`` plus views), for each benchmark family at tiny size
(``benchmarks/families.py``), with the concept branch on every joint block:

* ops are attributed to the joint block that is running (block pre/post hooks) or to ``outside`` (embedders, single
  blocks, the call hook's bookkeeping, the final layer);
* ``maps - plain`` per region is the concept branch's cost: ``first_block`` (it also embeds the concepts),
  ``per_block`` (a later block: the steady cost that scales with depth) and ``per_call`` (outside the blocks);
* each op is classified: ``view`` / ``alloc`` (no kernel), ``gemm``, ``attention``, ``copy``, ``elementwise``
  (element-wise and reductions), ``sync`` (a device-to-host read).

Usage:
    python benchmarks/launch_count.py                       # every family, tiny size, table on stdout
    python benchmarks/launch_count.py --family flux-dev --json counts.json
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections import Counter
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from families import FAMILIES, build_transformer, concept_width, make_inputs  # noqa: E402

from conceptattention import ConceptAttention  # noqa: E402


KINDS = ("gemm", "attention", "elementwise", "copy", "sync", "alloc", "view")
LAUNCHING = ("gemm", "attention", "elementwise", "copy")
_GEMM = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_addmm_activation"}
_COPY = {"_to_copy", "copy_", "clone", "contiguous", "cat", "stack", "index_copy_", "index_copy", "index_select", "fill_",
         "zero_", "zeros_like", "ones_like", "full_like", "new_zeros", "zeros", "ones", "full", "_unsafe_index_put"}
_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "resize_"}
_SYNC = {"_local_scalar_dense", "item", "is_nonzero", "equal"}


def op_kind(func: Any) -> str:
    """Kind of an aten overload: does it launch a kernel on a GPU, and which kind.

    Example:
        >>> op_kind(torch.ops.aten.addmm.default), op_kind(torch.ops.aten.view.default), op_kind(torch.ops.aten.mul.Tensor)
        ('gemm', 'view', 'elementwise')
    """
    name = func.overloadpacket.__name__
    if getattr(func, "is_view", False) or name in {"view", "_unsafe_view", "alias", "detach", "t", "expand",
                                                    "as_strided", "unsqueeze", "squeeze", "permute", "transpose",
                                                    "slice", "select", "split", "split_with_sizes", "unbind",
                                                    "chunk", "unflatten", "flatten", "reshape", "view_as_real",
                                                    "view_as_complex", "_reshape_alias"}:
        return "view"
    if name in _ALLOC:
        return "alloc"
    if name in _SYNC:
        return "sync"
    if name in _GEMM:
        return "gemm"
    if "attention" in name or "flash" in name or name.startswith("_efficient"):
        return "attention"
    if name in _COPY:
        return "copy"
    return "elementwise"


class RegionCounter(TorchDispatchMode):
    """Counts aten overloads per region (the running joint block, else ``"outside"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.region = "outside"
        self.counts: dict[str, Counter[Any]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts.setdefault(self.region, Counter())[func] += 1
        return func(*args, **(kwargs or {}))


def _region_hooks(blocks: list[torch.nn.Module], counter: RegionCounter) -> list[Any]:
    handles = []
    for index, block in enumerate(blocks):

        def enter(module: Any, args: Any, index: int = index) -> None:
            counter.region = f"block{index}"

        def leave(module: Any, args: Any, output: Any) -> None:
            counter.region = "outside"

        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(leave, always_call=True))
    return handles


def _forward(model: torch.nn.Module, inputs: dict[str, Any], handles: list[Any], *contexts: Any) -> None:
    """One no-grad forward inside ``contexts``; the hook ``handles`` are removed afterwards, also after an error."""
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            for context in contexts:
                stack.enter_context(context)
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()


def count_ops(model: torch.nn.Module, inputs: dict[str, Any], blocks: list[torch.nn.Module], context: Any) -> dict:
    counter = RegionCounter()
    _forward(model, inputs, _region_hooks(blocks, counter), context, counter)
    return counter.counts


def summarise(extra: Counter[Any]) -> dict[str, Any]:
    """Totals by kind and the ops of a ``maps - plain`` difference, largest first."""
    by_kind = Counter()
    ops: Counter[str] = Counter()
    for func, count in extra.items():
        by_kind[op_kind(func)] += count
        ops[f"{func.overloadpacket.__name__} ({op_kind(func)})"] += count
    return {
        "ops": int(sum(extra.values())),
        "kernels": int(sum(by_kind[kind] for kind in LAUNCHING)),
        "by_kind": {kind: int(by_kind[kind]) for kind in KINDS if by_kind[kind]},
        "top_ops": dict(ops.most_common(25)),
    }


def measure(family: str, concepts: int = 10, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Counts for one family: every joint block selected (``per_block``: a selected block computes scores) and only
    the last one selected (``per_unselected_block``: the blocks before it only advance the concept stream)."""
    device = torch.device("cpu")
    model = build_transformer(family, "tiny", device, dtype)
    inputs = make_inputs(family, "tiny", model, device, dtype)
    embeds = torch.randn(concepts, concept_width(model), generator=torch.Generator().manual_seed(1)).to(dtype)
    blocks = ConceptAttention(model, concept_embeds=embeds).adapter.joint_blocks(model)
    plain = count_ops(model, inputs, blocks, nullcontext())
    every = count_ops(model, inputs, blocks, ConceptAttention(model, concept_embeds=embeds, layers=list(range(len(blocks)))))
    last_only = count_ops(model, inputs, blocks, ConceptAttention(model, concept_embeds=embeds, layers=[len(blocks) - 1]))

    def diff(maps: dict[str, Counter[Any]], region: str) -> Counter[Any]:
        difference = Counter(maps.get(region, Counter()))
        difference.subtract(plain.get(region, Counter()))
        return Counter({func: count for func, count in difference.items() if count})

    steady = 1 if len(blocks) > 2 else 0  # block 0 also embeds the concepts
    return {
        "family": family,
        "size": "tiny",
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "joint_blocks": len(blocks),
        "concepts": concepts,
        "batch": int(next(iter(value for value in inputs.values() if isinstance(value, torch.Tensor))).shape[0]),
        "plain_ops_per_block": int(sum(plain.get(f"block{steady}", Counter()).values())),
        "plain_kernels_per_block": summarise(plain.get(f"block{steady}", Counter()))["kernels"],
        "extra_ops_each_block": [int(sum(diff(every, f"block{index}").values())) for index in range(len(blocks))],
        "first_block": summarise(diff(every, "block0")),
        "per_block": summarise(diff(every, f"block{steady}")),
        "per_unselected_block": summarise(diff(last_only, f"block{steady}")),
        "per_call": summarise(diff(every, "outside")),
    }


class CallSiteBytes(TorchDispatchMode):
    """Kernels and bytes (inputs + outputs) of the concept branch's ops inside one joint block, by call site.

    An op belongs to the concept branch when its innermost ``conceptattention`` frame is not the call of the stock
    diffusers processor (``self.original(...)``), a tap's call of a module of the attention (``_Tap``) nor the
    attention-input wrapper's call of the backend (``attention_inputs._KeepInputs``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.sites: dict[str, list[int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.on and op_kind(func) not in ("view", "alloc"):
            frames = [frame for frame in traceback.extract_stack() if "/conceptattention/" in frame.filename]
            line = (frames[-1].line or "") if frames else "self.original("
            stock = ("self.original(", "self.module(", "self.backend_fn(")  # the stock processor, a tap, the dispatch wrapper
            if not any(call in line for call in stock):
                frame = frames[-1]
                site = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {(frame.line or '').strip()[:70]}"
                leaves = tree_leaves((args, kwargs, out))
                entry = self.sites.setdefault(site, [0, 0])
                entry[0] += 1
                entry[1] += sum(leaf.nbytes for leaf in leaves if isinstance(leaf, torch.Tensor))
        return out


def full_size_bytes(family: str, block: int = 1, concepts: int = 10) -> dict[str, Any]:
    """Bytes the concept branch moves in joint block ``block`` at the released size (bf16, default layers, batch 1), from
    shapes alone: the model runs on the ``meta`` device (no memory, no arithmetic). Caveat: on ``meta`` the concept
    SDPA decomposes into the math path (its rows overstate it: a fused kernel reads the image keys and values once).
    """
    device = torch.device("meta")
    model = build_transformer(family, "full", device, torch.bfloat16)
    # batch 1: the guidance families test their latent halves for equality, which needs values (none on meta)
    inputs = make_inputs(family, "full", model, device, torch.bfloat16, batch=1)
    embeds = torch.randn(concepts, concept_width(model), generator=torch.Generator().manual_seed(1)).bfloat16()
    attention = ConceptAttention(model, concept_embeds=embeds)
    target = attention.adapter.joint_blocks(model)[block]
    counter = CallSiteBytes()
    handles = [
        target.register_forward_pre_hook(lambda *args: setattr(counter, "on", True)),
        target.register_forward_hook(lambda *args: setattr(counter, "on", False), always_call=True),
    ]
    _forward(model, inputs, handles, attention, counter)
    sites = sorted(counter.sites.items(), key=lambda item: -item[1][1])
    return {
        "family": family,
        "block": block,
        "selected": block in attention.layers,
        "layers": list(attention.layers),
        "kernels": sum(count for count, _ in counter.sites.values()),
        "megabytes": round(sum(size for _, size in counter.sites.values()) / 1e6, 1),
        "sites": [{"site": site, "kernels": count, "megabytes": round(size / 1e6, 1)} for site, (count, size) in sites],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| family | joint blocks | plain kernels / block | extra kernels / selected block (ops incl. views) | "
        "extra kernels / unselected block | first block | per call (outside blocks) | selected block, by kind |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        per_block = row["per_block"]
        kinds = ", ".join(f"{kind} {count}" for kind, count in per_block["by_kind"].items() if kind in LAUNCHING)
        lines.append(
            f"| {row['family']} | {row['joint_blocks']} | {row['plain_kernels_per_block']} | {per_block['kernels']} "
            f"({per_block['ops']}) | {row['per_unselected_block']['kernels']} | {row['first_block']['kernels']} | {row['per_call']['kernels']} | {kinds} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), nargs="+", default=list(FAMILIES))
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="bfloat16 (default) shows the dtype conversions a bf16 GPU run makes")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--full-size-bytes", action="store_true",
                        help="also: bytes per call site of one unselected joint block at the released size (meta device)")
    args = parser.parse_args(argv)
    rows = [measure(family, args.concepts, getattr(torch, args.dtype)) for family in args.family]
    if args.full_size_bytes:
        for row in rows:
            row["full_size_bytes"] = full_size_bytes(row["family"], concepts=args.concepts)
    print(table(rows))
    for row in rows:
        print(f"\n{row['family']}: extra ops of a selected block, largest first")
        for name, count in list(row["per_block"]["top_ops"].items())[:15]:
            print(f"  {count:4d}  {name}")
        if "full_size_bytes" in row:
            found = row["full_size_bytes"]
            print(f"  at the released size, block {found['block']}: {found['kernels']} kernels, {found['megabytes']} MB")
            for site in found["sites"][:10]:
                print(f"    {site['kernels']:3d} kernels {site['megabytes']:8.1f} MB  {site['site']}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
