"""Benchmark families: the released transformer configs (``full``) and CPU-sized ones (``tiny``), with the inputs
each pipeline feeds its transformer. Shared by ``overhead.py`` and ``launch_count.py``.

Weights are random (none can be downloaded here), created directly in the target dtype on the target device, so a
12B model never exists as a float32 copy. ``full`` configs are the ``transformer/config.json`` values of the released
checkpoints on the Hugging Face Hub (quoted from those files; each entry names its repository).

Example:
    >>> spec = FAMILIES["flux-dev"]
    >>> spec.transformer_class, spec.full.config["guidance_embeds"], spec.full.cfg_batch
    ('FluxTransformer2DModel', True, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch


@dataclass(frozen=True)
class Size:
    """One size of a family: the transformer config and the pipeline-side shapes of a call.

    Attributes:
        config: ``from_config`` keyword arguments of the diffusers transformer class.
        height: Image height in pixels (the VAE downsamples by ``vae_scale``).
        width: Image width in pixels.
        text_tokens: Prompt tokens the pipeline passes (after its own padding/truncation).
        cfg_batch: Rows per call in generation (2: classifier-free guidance batched as ``[uncond, cond]``).
        frames: Pixel frames of a video (``None`` for images).
        padded_text: Padding tokens at the end of the prompt, masked (Qwen-Image's ``encoder_hidden_states_mask``);
            0 means the pipeline passes no mask.
        throughput_sizes: ``(height, width)`` pairs of the explain-throughput measurement.
    """

    config: dict[str, Any]
    height: int
    width: int
    text_tokens: int
    cfg_batch: int = 1
    frames: int | None = None
    padded_text: int = 0
    throughput_sizes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class FamilySpec:
    """A benchmark family: its diffusers class, its sizes and how its pipeline builds a transformer call."""

    name: str
    transformer_class: str
    full: Size
    tiny: Size
    make_inputs: Callable[..., dict[str, Any]]
    vae_scale: int = 8
    guidance: float | None = None  # guidance embedding (FLUX.1-dev), as the pipeline passes it
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def size(self, name: str) -> Size:
        if name not in ("tiny", "full"):
            raise ValueError(f"size must be 'tiny' or 'full', got {name!r}.")
        return self.full if name == "full" else self.tiny


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def flux_inputs(spec: FamilySpec, model: Any, height: int, width: int, text_tokens: int, batch: int, **_: Any) -> dict:
    """``FluxPipeline``'s call: packed latents ``[B, (H/16)(W/16), 64]``, T5 states, pooled CLIP, ``t/1000``, ids."""
    from diffusers import FluxPipeline

    config = model.config
    grid_h, grid_w = height // (spec.vae_scale * 2), width // (spec.vae_scale * 2)  # VAE ×8, 2×2 packing
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {
        "hidden_states": _randn(generator, batch, grid_h * grid_w, config.in_channels),
        "encoder_hidden_states": _randn(generator, batch, text_tokens, config.joint_attention_dim),
        "pooled_projections": _randn(generator, batch, config.pooled_projection_dim),
        "timestep": torch.full((batch,), 0.5),
        "img_ids": FluxPipeline._prepare_latent_image_ids(batch, grid_h, grid_w, "cpu", torch.float32),
        "txt_ids": torch.zeros(text_tokens, 3),
    }
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), float(spec.guidance or 3.5))  # the pipeline's guidance_scale
    return inputs


def sd3_inputs(spec: FamilySpec, model: Any, height: int, width: int, text_tokens: int, batch: int, **_: Any) -> dict:
    """``StableDiffusion3Pipeline``'s call: latents ``[B, 16, H/8, W/8]``, CLIP-L+G (77) and T5 (256) states, pooled
    CLIP ``[B, 2048]``, timestep on the 0..1000 scale; with CFG the batch is ``[uncond, cond]``."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": _randn(generator, batch, config.in_channels, height // spec.vae_scale, width // spec.vae_scale),
        "encoder_hidden_states": _randn(generator, batch, text_tokens, config.joint_attention_dim),
        "pooled_projections": _randn(generator, batch, config.pooled_projection_dim),
        "timestep": torch.full((batch,), 500.0),
    }


def cogvideox_inputs(
    spec: FamilySpec, model: Any, height: int, width: int, text_tokens: int, batch: int, frames: int | None = None, **_: Any
) -> dict:
    """``CogVideoXPipeline``'s call: latents ``[B, F', 16, H/8, W/8]`` with ``F' = (frames - 1) / 4 + 1``, T5 states
    (226 tokens), an integer timestep, and the 3-D RoPE the pipeline builds (``_prepare_rotary_positional_embeddings``)."""
    from diffusers import CogVideoXPipeline

    config = model.config
    frames = frames or 1
    latent_frames = (frames - 1) // config.temporal_compression_ratio + 1
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {
        "hidden_states": _randn(
            generator, batch, latent_frames, config.in_channels, height // spec.vae_scale, width // spec.vae_scale
        ),
        "encoder_hidden_states": _randn(generator, batch, text_tokens, config.text_embed_dim),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
    }
    if config.use_rotary_positional_embeddings:
        stand_in = SimpleNamespace(vae_scale_factor_spatial=spec.vae_scale, transformer=model)  # the pipeline's self
        inputs["image_rotary_emb"] = CogVideoXPipeline._prepare_rotary_positional_embeddings(
            stand_in, height, width, latent_frames, torch.device("cpu")
        )
    return inputs


def qwenimage_inputs(
    spec: FamilySpec, model: Any, height: int, width: int, text_tokens: int, batch: int, padded_text: int = 0, **_: Any
) -> dict:
    """``QwenImagePipeline``'s call: packed latents ``[B, (H/16)(W/16), 64]``, Qwen2.5-VL states, ``t/1000``,
    ``img_shapes`` ``[[(1, H/16, W/16)]] * B`` and the prompt mask (None when no token is padding, as the pipeline)."""
    config = model.config
    grid_h, grid_w = height // (spec.vae_scale * 2), width // (spec.vae_scale * 2)
    generator = torch.Generator().manual_seed(0)
    mask = None
    if padded_text:
        mask = torch.ones(batch, text_tokens, dtype=torch.long)
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": _randn(generator, batch, grid_h * grid_w, config.in_channels),
        "encoder_hidden_states": _randn(generator, batch, text_tokens, config.joint_attention_dim),
        "encoder_hidden_states_mask": mask,
        "timestep": torch.full((batch,), 0.5),
        "img_shapes": [[(1, grid_h, grid_w)]] * batch,
    }


# black-forest-labs/FLUX.1-schnell and FLUX.1-dev, transformer/config.json (the two differ only in guidance_embeds)
_FLUX_FULL = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56),
)
# CPU size (the `tiny` preset): 6 double + 4 single blocks, width 128
_FLUX_TINY = dict(
    patch_size=1, in_channels=16, num_layers=6, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
    joint_attention_dim=128, pooled_projection_dim=64, axes_dims_rope=(8, 12, 12),
)
_IMAGE_THROUGHPUT = ((512, 512), (1024, 1024))
_TINY_THROUGHPUT = ((64, 64), (128, 128))

FAMILIES: dict[str, FamilySpec] = {
    "flux-schnell": FamilySpec(
        name="flux-schnell",
        transformer_class="FluxTransformer2DModel",
        # FluxPipeline pads the T5 prompt to max_sequence_length (512 by default)
        full=Size({**_FLUX_FULL, "guidance_embeds": False}, 1024, 1024, 512, throughput_sizes=_IMAGE_THROUGHPUT),
        tiny=Size({**_FLUX_TINY, "guidance_embeds": False}, 256, 256, 64, throughput_sizes=_TINY_THROUGHPUT),
        make_inputs=flux_inputs,
    ),
    "flux-dev": FamilySpec(
        name="flux-dev",
        transformer_class="FluxTransformer2DModel",
        full=Size({**_FLUX_FULL, "guidance_embeds": True}, 1024, 1024, 512, throughput_sizes=_IMAGE_THROUGHPUT),
        tiny=Size({**_FLUX_TINY, "guidance_embeds": True}, 256, 256, 64, throughput_sizes=_TINY_THROUGHPUT),
        make_inputs=flux_inputs,
        guidance=3.5,  # FluxPipeline's default guidance_scale, passed as the guidance embedding
    ),
    "sd3.5-large": FamilySpec(
        name="sd3.5-large",
        transformer_class="SD3Transformer2DModel",
        # stabilityai/stable-diffusion-3.5-large, transformer/config.json (no dual-attention layers, RMS QK-norm);
        # the pipeline's prompt is CLIP 77 + T5 256 = 333 tokens, CFG (guidance_scale 3.5) batches [uncond, cond]
        full=Size(
            dict(
                sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, dual_attention_layers=(),
                qk_norm="rms_norm",
            ),
            1024, 1024, 333, cfg_batch=2, throughput_sizes=_IMAGE_THROUGHPUT,
        ),
        tiny=Size(
            dict(
                sample_size=32, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=32,
                num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=64,
                out_channels=16, pos_embed_max_size=32, dual_attention_layers=(), qk_norm="rms_norm",
            ),
            256, 256, 40, cfg_batch=2, throughput_sizes=_TINY_THROUGHPUT,
        ),
        make_inputs=sd3_inputs,
    ),
    "cogvideox-5b": FamilySpec(
        name="cogvideox-5b",
        transformer_class="CogVideoXTransformer3DModel",
        # THUDM/CogVideoX-5b, transformer/config.json; the pipeline: 49 frames at 480×720, T5 226 tokens,
        # guidance_scale 6 (CFG batched [uncond, cond]), 3-D RoPE
        full=Size(
            dict(
                num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
                freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0,
                attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
                temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
                timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
                spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
                use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
            ),
            480, 720, 226, cfg_batch=2, frames=49, throughput_sizes=((480, 720),),
        ),
        tiny=Size(
            dict(
                num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16, time_embed_dim=64,
                text_embed_dim=128, num_layers=4, attention_bias=True, sample_width=12, sample_height=8,
                sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=32,
                use_rotary_positional_embeddings=True,
            ),
            64, 96, 32, cfg_batch=2, frames=9, throughput_sizes=((64, 96),),
        ),
        make_inputs=cogvideox_inputs,
    ),
    "qwen-image": FamilySpec(
        name="qwen-image",
        transformer_class="QwenImageTransformer2DModel",
        # Qwen/Qwen-Image, transformer/config.json (20B: 41 GB in bf16). The pipeline runs true CFG as two separate
        # batch-1 calls and passes no mask for an unpadded single prompt; 128 prompt tokens stand for a long prompt.
        full=Size(
            dict(
                patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
            ),
            1024, 1024, 128, throughput_sizes=_IMAGE_THROUGHPUT,
        ),
        tiny=Size(
            dict(
                patch_size=2, in_channels=64, out_channels=16, num_layers=4, attention_head_dim=32,
                num_attention_heads=4, joint_attention_dim=128, guidance_embeds=False, axes_dims_rope=(8, 12, 12),
            ),
            256, 256, 24, padded_text=4, throughput_sizes=_TINY_THROUGHPUT,  # tiny: a padded prompt, masked
        ),
        make_inputs=qwenimage_inputs,
    ),
}


def build_transformer(family: str, size: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight transformer of ``family`` at ``size``, its parameters created in ``dtype`` on ``device``.

    Example:
        >>> model = build_transformer("qwen-image", "tiny", torch.device("cpu"), torch.float32)
        >>> type(model).__name__, len(model.transformer_blocks)
        ('QwenImageTransformer2DModel', 4)
    """
    import diffusers

    spec = FAMILIES[family]
    cls = getattr(diffusers, spec.transformer_class)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in the target dtype (no fp32 copy of a 12B model)
    try:
        with torch.device(device):
            model = cls(**spec.size(size).config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def make_inputs(
    family: str,
    size: str,
    model: Any,
    device: torch.device,
    dtype: torch.dtype,
    *,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    text_tokens: int | None = None,
    guidance_batch: bool | None = None,
) -> dict[str, Any]:
    """Keyword inputs of one transformer call as the family's pipeline builds them (``return_dict=False``),
    floating tensors in ``dtype`` on ``device`` (FLUX.1's ids too, as the pipeline casts them; masks, integer
    timesteps and CogVideoX's float32 RoPE keep theirs).

    Args:
        batch: Rows (default: the size's ``cfg_batch``).
        height: Pixels (default: the size's).
        width: Pixels.
        text_tokens: Prompt tokens (default: the size's).
        guidance_batch: Batched classifier-free guidance: the latents repeated (``cat([latents] * 2)``) under
            different prompt rows, as the pipeline feeds them (default: when the batch is the size's ``cfg_batch`` of
            2). Noise-sample batches of the explain path are not.

    Example:
        >>> model = build_transformer("cogvideox-5b", "tiny", torch.device("cpu"), torch.float32)
        >>> make_inputs("cogvideox-5b", "tiny", model, torch.device("cpu"), torch.float32)["hidden_states"].shape
        torch.Size([2, 3, 16, 8, 12])
    """
    spec = FAMILIES[family]
    chosen = spec.size(size)
    if guidance_batch is None:
        guidance_batch = batch is None and chosen.cfg_batch == 2
    inputs = spec.make_inputs(
        spec,
        model,
        height or chosen.height,
        width or chosen.width,
        text_tokens or chosen.text_tokens,
        batch or chosen.cfg_batch,
        frames=chosen.frames,
        padded_text=chosen.padded_text,
    )
    if guidance_batch:
        latents = inputs["hidden_states"]
        half = latents[: latents.shape[0] // 2]
        inputs["hidden_states"] = torch.cat([half, half])  # [uncond, cond] rows of the same latents
    moved: dict[str, Any] = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            moved[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        elif isinstance(value, tuple):  # CogVideoX's RoPE (cos, sin): the pipeline keeps them in float32
            moved[key] = tuple(item.to(device=device) for item in value)
        else:
            moved[key] = value
    moved["return_dict"] = False
    return moved


def concept_width(model: Any) -> int:
    """Width of the concept embeddings (the text encoder's output: the model's text input width)."""
    config = model.config
    return int(getattr(config, "joint_attention_dim", None) or config.text_embed_dim)
