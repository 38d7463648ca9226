"""Tiny random-weight models and pipelines built fully offline, and the shared adapter test battery.

For tests, docs, benchmarks and people writing adapters. Nothing here downloads anything: tokenizers are built from
in-memory vocabularies (character or byte level, so every concept is multi-token), encoders, VAEs and transformers from
small configs, seeded before each component, in eval mode. Configurations follow diffusers' own fast tests
(``get_dummy_components``), scaled so that a whole pipeline call takes well under a second on a CPU.

Layout (mirrors :mod:`conceptattention.adapters`):

- ``testing/<family>.py``: ``tiny_<family>_transformer``, ``tiny_<family>_inputs`` (keyword inputs of a bare
  transformer call) and ``tiny_<family>_pipeline`` for the adapter ``adapters/<family>.py``; every public builder is
  re-exported here, so ``from conceptattention.testing import tiny_flux_pipeline`` works.
- ``testing/common.py``: seeding, the tiny VAE, call-input helpers; ``testing/text_encoders.py``: the tiny CLIP, T5,
  Qwen-style tokenizers and text encoders shared by the pipelines; ``testing/flux_like.py``: inputs of the FLUX.1
  clones.
- ``testing/battery.py`` (and ``zoo_battery.py``, ``flux_like_battery.py``): the adapter battery, a pytest test
  class to subclass (importing it needs pytest; nothing else in the library does).
- ``testing/references/<family>.py``: naive float64 references of the method per family (``references/common.py``:
  their shared building blocks), which the battery compares the adapter's maps with.

Adding a family: put its builders in ``testing/<family>.py`` (named as its adapter module) and re-export them below;
its naive reference in ``testing/references/<family>.py``; its test file ``tests/adapters/test_<family>.py``
subclasses :class:`~conceptattention.testing.battery.AdapterBattery` (or ``ZooBattery`` / ``FluxLikeBattery``) with
the family's factories, grids and reference as class attributes (see the battery module's docstring).

Example:
    >>> pipe = tiny_flux_pipeline()
    >>> type(pipe).__name__
    'FluxPipeline'
"""

from __future__ import annotations

from .auraflow import tiny_auraflow_inputs, tiny_auraflow_pipeline, tiny_auraflow_transformer
from .bria import tiny_bria_inputs, tiny_bria_pipeline, tiny_bria_transformer
from .bria_fibo import (
    BRIA_FIBO_JOINT_DIM,
    BRIA_FIBO_TEXT_DIM,
    tiny_bria_fibo_inputs,
    tiny_bria_fibo_pipeline,
    tiny_bria_fibo_transformer,
)
from .chroma import tiny_chroma_inputs, tiny_chroma_pipeline, tiny_chroma_transformer
from .cogvideox import (
    CogVideoXVersion,
    cogvideox_rotary_embeddings,
    tiny_cogvideox_inputs,
    tiny_cogvideox_pipeline,
    tiny_cogvideox_transformer,
)
from .cogview4 import tiny_cogview4_inputs, tiny_cogview4_pipeline, tiny_cogview4_transformer
from .common import (
    FLUX_FAMILY_GEOMETRY,
    SD3_STYLE_VAE,
    call_inputs,
    flow_matching_pipeline,
    padding_mask,
    quiet_pipeline,
    seeded_eval,
    tiny_autoencoder_kl,
)
from .flux import tiny_flux_inputs, tiny_flux_pipeline, tiny_flux_transformer, tiny_flux_vae
from .flux2 import (
    FLUX2_TEXT_HIDDEN,
    tiny_flux2_inputs,
    tiny_flux2_klein_pipeline,
    tiny_flux2_pipeline,
    tiny_flux2_transformer,
)
from .flux_like import FLUX_CLONE_AXES, flux_clone_inputs
from .hidream_image import (
    HIDREAM_LLAMA_DIM,
    HIDREAM_LLAMA_LAYERS,
    HIDREAM_POOLED_DIM,
    HIDREAM_T5_DIM,
    tiny_hidream_image_inputs,
    tiny_hidream_image_pipeline,
    tiny_hidream_image_transformer,
)
from .hunyuan_image import tiny_hunyuan_image_inputs, tiny_hunyuan_image_pipeline, tiny_hunyuan_image_transformer
from .hunyuan_video import (
    LLAMA_SPECIAL_TOKENS,
    tiny_hunyuan_video_inputs,
    tiny_hunyuan_video_pipeline,
    tiny_hunyuan_video_transformer,
)
from .hunyuan_video15 import (
    tiny_hunyuan_video15_inputs,
    tiny_hunyuan_video15_pipeline,
    tiny_hunyuan_video15_transformer,
)
from .joyimage import (
    JOYIMAGE_TEXT_DIM,
    tiny_joyimage_edit_plus_inputs,
    tiny_joyimage_edit_plus_pipeline,
    tiny_joyimage_edit_plus_transformer,
    tiny_joyimage_edit_text_encoder,
    tiny_joyimage_inputs,
    tiny_joyimage_pipeline,
    tiny_joyimage_transformer,
    tiny_qwen3vl_processor,
)
from .krea2 import KREA2_TEXT_DIM, KREA2_TEXT_LAYERS, tiny_krea2_inputs, tiny_krea2_pipeline, tiny_krea2_transformer
from .longcat_image import tiny_longcat_image_inputs, tiny_longcat_image_pipeline, tiny_longcat_image_transformer
from .mochi import tiny_mochi_inputs, tiny_mochi_pipeline, tiny_mochi_transformer
from .ovis_image import OVIS_TEXT_HIDDEN, tiny_ovis_image_inputs, tiny_ovis_image_pipeline, tiny_ovis_image_transformer
from .qwenimage import tiny_qwenimage_inputs, tiny_qwenimage_pipeline, tiny_qwenimage_transformer, tiny_qwenimage_vae
from .sd3 import tiny_sd3_inputs, tiny_sd3_pipeline, tiny_sd3_transformer
from .text_encoders import (
    MISTRAL_CHAT_TEMPLATE,
    QWEN_CHAT_TEMPLATE,
    bytes_to_unicode,
    tiny_byte_level_tokenizer,
    tiny_clip,
    tiny_clip_text_model,
    tiny_clip_tokenizer,
    tiny_qwen3_text_encoder,
    tiny_qwen3vl_config,
    tiny_qwen25vl_encoder,
    tiny_t5,
    tiny_t5_encoder,
    tiny_t5_text_model,
    tiny_t5_tokenizer,
)
from .z_image import Z_IMAGE_CAP_DIM, tiny_z_image_inputs, tiny_z_image_pipeline, tiny_z_image_transformer


__all__ = [
    "BRIA_FIBO_JOINT_DIM",
    "BRIA_FIBO_TEXT_DIM",
    "HIDREAM_LLAMA_DIM",
    "HIDREAM_LLAMA_LAYERS",
    "HIDREAM_POOLED_DIM",
    "HIDREAM_T5_DIM",
    "JOYIMAGE_TEXT_DIM",
    "tiny_bria_fibo_inputs",
    "tiny_bria_fibo_pipeline",
    "tiny_bria_fibo_transformer",
    "tiny_hidream_image_inputs",
    "tiny_hidream_image_pipeline",
    "tiny_hidream_image_transformer",
    "tiny_joyimage_edit_plus_inputs",
    "tiny_joyimage_edit_plus_pipeline",
    "tiny_joyimage_edit_plus_transformer",
    "tiny_joyimage_edit_text_encoder",
    "tiny_joyimage_inputs",
    "tiny_joyimage_pipeline",
    "tiny_joyimage_transformer",
    "tiny_qwen3vl_processor",
    "tiny_qwen3vl_config",
    "CogVideoXVersion",
    "FLUX2_TEXT_HIDDEN",
    "FLUX_CLONE_AXES",
    "FLUX_FAMILY_GEOMETRY",
    "KREA2_TEXT_DIM",
    "KREA2_TEXT_LAYERS",
    "LLAMA_SPECIAL_TOKENS",
    "MISTRAL_CHAT_TEMPLATE",
    "OVIS_TEXT_HIDDEN",
    "QWEN_CHAT_TEMPLATE",
    "SD3_STYLE_VAE",
    "Z_IMAGE_CAP_DIM",
    "bytes_to_unicode",
    "call_inputs",
    "cogvideox_rotary_embeddings",
    "flow_matching_pipeline",
    "flux_clone_inputs",
    "padding_mask",
    "quiet_pipeline",
    "seeded_eval",
    "tiny_auraflow_inputs",
    "tiny_auraflow_pipeline",
    "tiny_auraflow_transformer",
    "tiny_autoencoder_kl",
    "tiny_bria_inputs",
    "tiny_bria_pipeline",
    "tiny_bria_transformer",
    "tiny_byte_level_tokenizer",
    "tiny_chroma_inputs",
    "tiny_chroma_pipeline",
    "tiny_chroma_transformer",
    "tiny_clip",
    "tiny_clip_text_model",
    "tiny_clip_tokenizer",
    "tiny_cogvideox_inputs",
    "tiny_cogvideox_pipeline",
    "tiny_cogvideox_transformer",
    "tiny_cogview4_inputs",
    "tiny_cogview4_pipeline",
    "tiny_cogview4_transformer",
    "tiny_flux2_inputs",
    "tiny_flux2_klein_pipeline",
    "tiny_flux2_pipeline",
    "tiny_flux2_transformer",
    "tiny_flux_inputs",
    "tiny_flux_pipeline",
    "tiny_flux_transformer",
    "tiny_flux_vae",
    "tiny_hunyuan_image_inputs",
    "tiny_hunyuan_image_pipeline",
    "tiny_hunyuan_image_transformer",
    "tiny_hunyuan_video15_inputs",
    "tiny_hunyuan_video15_pipeline",
    "tiny_hunyuan_video15_transformer",
    "tiny_hunyuan_video_inputs",
    "tiny_hunyuan_video_pipeline",
    "tiny_hunyuan_video_transformer",
    "tiny_krea2_inputs",
    "tiny_krea2_pipeline",
    "tiny_krea2_transformer",
    "tiny_longcat_image_inputs",
    "tiny_longcat_image_pipeline",
    "tiny_longcat_image_transformer",
    "tiny_mochi_inputs",
    "tiny_mochi_pipeline",
    "tiny_mochi_transformer",
    "tiny_ovis_image_inputs",
    "tiny_ovis_image_pipeline",
    "tiny_ovis_image_transformer",
    "tiny_qwen25vl_encoder",
    "tiny_qwen3_text_encoder",
    "tiny_qwenimage_inputs",
    "tiny_qwenimage_pipeline",
    "tiny_qwenimage_transformer",
    "tiny_qwenimage_vae",
    "tiny_sd3_inputs",
    "tiny_sd3_pipeline",
    "tiny_sd3_transformer",
    "tiny_t5",
    "tiny_t5_encoder",
    "tiny_t5_text_model",
    "tiny_t5_tokenizer",
    "tiny_z_image_inputs",
    "tiny_z_image_pipeline",
    "tiny_z_image_transformer",
]
