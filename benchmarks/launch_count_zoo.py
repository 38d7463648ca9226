"""Aten ops of the concept branch per joint block for the zoo families that keep the joint attention inputs
(adapters/attention_inputs.py), with the kept tensors (eager) and with RoPE re-applied to the taps (the fallback of the
compiled path, which was the eager path before): the companion of ``launch_count.py`` for the families that
``benchmarks/families.py`` does not list. Tiny models of ``conceptattention.testing``, batch 1, CPU, the same counting
(``launch_count.count_ops``: a ``TorchDispatchMode`` per joint block; kernels = non-view, non-allocation ops).

Usage:
    python benchmarks/launch_count_zoo.py                    # every family, bf16, table on stdout
    python benchmarks/launch_count_zoo.py --family z_image krea2 --dtype float32 --space cross_attention
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_count import count_ops, summarise  # noqa: E402

from conceptattention import ConceptAttention  # noqa: E402
from conceptattention.adapters import flux, hunyuan_video, joyimage, krea2, z_image  # noqa: E402
from conceptattention.testing import hunyuan_image as t_hunyuan_image  # noqa: E402
from conceptattention.testing import hunyuan_video as t_hunyuan_video  # noqa: E402
from conceptattention.testing import hunyuan_video15 as t_hunyuan_video15  # noqa: E402
from conceptattention.testing import joyimage as t_joyimage  # noqa: E402
from conceptattention.testing import krea2 as t_krea2  # noqa: E402
from conceptattention.testing import z_image as t_z_image  # noqa: E402


#: family -> (tiny transformer, its inputs, concept width, adapter module whose ``keep_attention_inputs`` runs)
ZOO: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], dict[str, Any]], int, Any]] = {
    "hunyuan_image": (t_hunyuan_image.tiny_hunyuan_image_transformer, t_hunyuan_image.tiny_hunyuan_image_inputs, 16, flux),
    "hunyuan_video15": (t_hunyuan_video15.tiny_hunyuan_video15_transformer, t_hunyuan_video15.tiny_hunyuan_video15_inputs, 16, flux),
    "hunyuan_video": (t_hunyuan_video.tiny_hunyuan_video_transformer, t_hunyuan_video.tiny_hunyuan_video_inputs, 16, hunyuan_video),
    "krea2": (t_krea2.tiny_krea2_transformer, t_krea2.tiny_krea2_inputs, 32, krea2),
    "joyimage": (t_joyimage.tiny_joyimage_transformer, t_joyimage.tiny_joyimage_inputs, 16, joyimage),
    "joyimage_edit_plus": (t_joyimage.tiny_joyimage_edit_plus_transformer, t_joyimage.tiny_joyimage_edit_plus_inputs, 16, joyimage),
    "z_image": (t_z_image.tiny_z_image_transformer, t_z_image.tiny_z_image_inputs, 16, z_image),
}


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (also inside lists: Z-Image) in ``dtype``; everything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list):
        return [_cast(item, dtype) for item in value]
    return value


def measure(family: str, concepts: int = 10, dtype: torch.dtype = torch.bfloat16, space: str | None = None) -> dict[str, Any]:
    """Extra kernels (and ops incl. views) per joint block, kept inputs vs fallback: a selected block (every block
    selected, block 1) and an unselected one (only the last block selected, block 1); ``space`` the score space
    (None: the default).

    Returns:
        ``{"family", "joint_blocks", "plain_kernels_per_block", "<kept|fallback>_<selected|unselected>": (kernels,
        ops)}``.
    """
    build, make_inputs, width, keeper = ZOO[family]
    model = build().to(dtype)
    inputs = {name: _cast(value, dtype) for name, value in make_inputs().items()}
    embeds = torch.randn(concepts, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    options = {} if space is None else {"space": space}
    blocks = ConceptAttention(model, concept_embeds=embeds).adapter.joint_blocks(model)
    plain = count_ops(model, inputs, blocks, nullcontext())
    row: dict[str, Any] = {"family": family, "joint_blocks": len(blocks)}
    row["plain_kernels_per_block"] = summarise(plain.get("block1", Counter()))["kernels"]
    for mode in ("kept", "fallback"):
        patch = (
            mock.patch.object(keeper, "keep_attention_inputs", lambda processor, sink: nullcontext())
            if mode == "fallback" and hasattr(keeper, "keep_attention_inputs")
            else nullcontext()
        )
        with patch:
            every_layer = ConceptAttention(model, concept_embeds=embeds, layers=list(range(len(blocks))), **options)
            every = count_ops(model, inputs, blocks, every_layer)
            last = count_ops(model, inputs, blocks, ConceptAttention(model, concept_embeds=embeds, layers=[len(blocks) - 1], **options))
        for name, counts in (("selected", every), ("unselected", last)):
            extra = Counter(counts.get("block1", Counter()))
            extra.subtract(plain.get("block1", Counter()))
            summary = summarise(Counter({func: count for func, count in extra.items() if count}))
            row[f"{mode}_{name}"] = (summary["kernels"], summary["ops"])
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(ZOO), nargs="+", default=list(ZOO))
    parser.add_argument("--concepts", type=int, default=10)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--space", choices=["output", "cross_attention", "value"], default=None,
                        help="score space (default: the library's default)")
    args = parser.parse_args(argv)
    rows = [measure(family, args.concepts, getattr(torch, args.dtype), args.space) for family in args.family]
    print(
        "| family | joint blocks | plain kernels / block | extra kernels / selected block, kept (fallback) | "
        "extra kernels / unselected block, kept (fallback) | ops incl. views / selected block, kept (fallback) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['family']} | {row['joint_blocks']} | {row['plain_kernels_per_block']} | "
            f"{row['kept_selected'][0]} ({row['fallback_selected'][0]}) | "
            f"{row['kept_unselected'][0]} ({row['fallback_unselected'][0]}) | "
            f"{row['kept_selected'][1]} ({row['fallback_selected'][1]}) |"
        )
    return rows


if __name__ == "__main__":
    main()
