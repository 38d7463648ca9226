"""Print the README's table of supported models, generated from the adapter registry.

Usage: python scripts/supported_models_table.py   (tests/unit/test_readme.py checks the README holds this output)
"""

from __future__ import annotations

from conceptattention import supported_models


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


if __name__ == "__main__":
    print(table())
