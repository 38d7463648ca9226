"""Print the README's table of supported models and its list of refused classes, generated from the adapter registry.

Usage: python scripts/supported_models_table.py [--refused]   (tests/unit/test_readme.py and
tests/adapters/test_refusals.py check the README holds these outputs)
"""

from __future__ import annotations

import sys

from conceptattention import supported_models
from conceptattention.adapters import refused_models


def table() -> str:
    rows = [
        "| family | diffusers transformer | pipelines | output | default layers | tested how |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    models = supported_models()
    for row in models:
        rows.append(
            f"| {row['family']} | `{row['transformer']}` | {', '.join(f'`{p}`' for p in row['pipelines'].split(', '))} "
            f"| {row['modality']} | {row['default_layers']} | {row['tested']} |"
        )
    rows += [
        "",
        "| family | diffusers | attention path | `torch.compile` | fused QKV | IP-Adapter | cache accelerators (`enable_cache`) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in models:
        rows.append(
            f"| {row['family']} | {row['diffusers']} | {row['attention']} | {row['compile']} | {row['fused_qkv']} | {row['ip_adapter']} "
            f"| {row['caches']} |"
        )
    return "\n".join(rows)


def refused_table() -> str:
    """The diffusers transformers that ConceptAttention refuses, with their kind and the evidence."""
    rows = ["| diffusers transformer | kind | why (diffusers 0.42.1 source) |", "| --- | --- | --- |"]
    for row in refused_models():
        rows.append(f"| `{row['transformer']}` | {row['kind']} | {row['reason']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(refused_table() if "--refused" in sys.argv[1:] else table())
