"""A deliberately naive float64 reference of ConceptAttention on HunyuanImage 2.1, for tests.

It re-runs the double-stream blocks of a ``HunyuanImageTransformer2DModel`` by hand with ONE full attention over
``[image, text, concepts]`` and an explicit boolean mask (image and text see the image and the unpadded text; concepts
see the image and/or the concepts, never the text). RoPE rotates the image rows only. Each concept is run through the
token refiner on its own, in a Python loop; ``temb`` is rebuilt from the timestep (and guidance). The blocks run as
HunyuanVideo's reference runs them (:func:`.hunyuan_video.double_stream_scores`). No code is shared with the library's
processors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .common import Layout, key_mask
from .hunyuan_video import double_stream_scores, refine_each_concept


def naive_hunyuan_image_scores(
    transformer: Any,
    inputs: dict[str, Any],
    concept_embeds: torch.Tensor,
    layers: list[int],
    space: str = "output",
    mode: str = "both",
    refine_concepts_together: bool = False,
) -> torch.Tensor:
    """Per-layer saliency scores ``[L, B, C, h·w]`` (float64) for the selected layers.

    ``refine_concepts_together`` (all concepts refined as one prompt) is a deliberately wrong variant.
    """
    model = copy.deepcopy(transformer).double()
    latents = inputs["hidden_states"].double()  # [B, c, H, W]
    timestep = inputs["timestep"].double()
    guidance = inputs.get("guidance")
    temb = model.time_guidance_embed(timestep, guidance=None if guidance is None else guidance.double())  # [B, d]
    cos, sin = model.rope(latents)  # [h·w, D] each
    image = model.x_embedder(latents)  # [B, I, d]
    text_mask = inputs["encoder_attention_mask"].bool()  # [B, T]
    text = model.context_embedder(inputs["encoder_hidden_states"].double(), timestep, text_mask)  # [B, T, d]
    batch, num_image = image.shape[:2]
    if refine_concepts_together:  # deliberately wrong: all concepts refined as one prompt
        embeds = concept_embeds.double()[None]  # [1, C, D_text]: one prompt
        concepts = torch.stack([model.context_embedder(embeds, timestep[s : s + 1])[0] for s in range(batch)])  # [B, C, d]
    else:
        concepts = refine_each_concept(model, concept_embeds, timestep)  # [B, C, d]
    num_text = text.shape[1]
    layout = Layout.image_first(num_text, num_image, concepts.shape[1])  # [image, text, concepts]
    valid_keys = torch.cat([torch.ones(batch, num_image, dtype=torch.bool), text_mask], dim=1)  # [B, I + T]
    allowed = layout.mask(mode, joint=key_mask(valid_keys))  # [B, S, S]

    return double_stream_scores(
        model, layout, allowed, (image, text, concepts), (temb, temb), (cos, sin), layers, space, mode
    )  # [L, B, C, h·w]
