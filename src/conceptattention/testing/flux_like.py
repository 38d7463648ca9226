"""Inputs and RoPE axes shared by the tiny FLUX.1 clones without pooled text (Bria, LongCat-Image, Ovis-Image;
:mod:`conceptattention.adapters.flux_like`).

Example:
    >>> sorted(flux_clone_inputs(1, 2, 3, 4, seed=0, diagonal_text_ids=True))[:3]
    ['encoder_hidden_states', 'hidden_states', 'img_ids']
"""

from __future__ import annotations

from typing import Any

import torch

from .flux import tiny_flux_inputs


#: RoPE axes of the tiny FLUX.1 clones (2 heads × 16).
FLUX_CLONE_AXES = (4, 4, 8)


def flux_clone_inputs(
    batch_size: int, height: int, width: int, text_tokens: int, seed: int, diagonal_text_ids: bool
) -> dict[str, Any]:
    """FLUX.1's tiny inputs without the pooled vector; with ``diagonal_text_ids`` the text ids are ``(0, i, i)``
    (LongCat-Image, Ovis-Image) and the image ids are offset past them, as those pipelines build them."""
    inputs = tiny_flux_inputs(batch_size, height, width, text_tokens, seed=seed)
    del inputs["pooled_projections"]
    if diagonal_text_ids:
        positions = torch.arange(text_tokens, dtype=torch.float32)  # [T]
        inputs["txt_ids"] = torch.stack([torch.zeros(text_tokens), positions, positions], dim=1)  # [T, 3]
        image_ids = inputs["img_ids"].clone()  # [I, 3]
        image_ids[:, 0] = 1  # modality id of the image
        image_ids[:, 1:] += text_tokens
        inputs["img_ids"] = image_ids
    return inputs
