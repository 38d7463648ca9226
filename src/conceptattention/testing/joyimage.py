"""Tiny random-weight JoyImage Edit and Edit Plus transformers, inputs and pipelines (with a tiny in-memory Qwen3-VL
processor for their editing paths) for :mod:`conceptattention.adapters.joyimage`.

Example:
    >>> type(tiny_joyimage_transformer()).__name__
    'JoyImageEditTransformer3DModel'
"""

from __future__ import annotations

from typing import Any

import torch

from .common import quiet_pipeline, seeded_eval
from .text_encoders import QWEN_CHAT_TEMPLATE, tiny_byte_level_tokenizer, tiny_qwen3vl_config


#: Width of the tiny JoyImage Edit's text features (``text_dim``).
JOYIMAGE_TEXT_DIM = 16


def tiny_joyimage_transformer(num_layers: int = 3, rope_type: str = "rope", seed: int = 0, plus: bool = False) -> Any:
    """A random-weight ``JoyImageEditTransformer3DModel`` (``plus``: ``JoyImageEditPlusTransformer3DModel``; 2 heads
    × 16, patch ``(1, 2, 2)``, 4 latent channels, text width 16; eval mode). The learned modulation tables start at
    zero in diffusers: they are randomised here so that the tests see them.

    Example:
        >>> len(tiny_joyimage_transformer().double_blocks)
        3
    """
    import diffusers

    model_class = diffusers.JoyImageEditPlusTransformer3DModel if plus else diffusers.JoyImageEditTransformer3DModel
    model = seeded_eval(
        seed,
        model_class,
        patch_size=[1, 2, 2],
        in_channels=4,
        hidden_size=32,
        num_attention_heads=2,
        text_dim=JOYIMAGE_TEXT_DIM,
        num_layers=num_layers,
        rope_dim_list=[4, 6, 6],
        rope_type=rope_type,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.double_blocks:
            for table in (block.img_mod.modulate_table, block.txt_mod.modulate_table):
                table.copy_(0.1 * torch.randn(table.shape, generator=generator))
    return model


def tiny_joyimage_inputs(
    batch_size: int = 1, height: int = 8, width: int = 12, text_tokens: int = 7, references: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``JoyImageEditTransformer3DModel`` call: latents ``[B, 4, 1, h, w]`` (``references``
    > 0: ``[B, references + 1, 4, 1, h, w]``, the reference images first and the target last, as the edit pipeline
    stacks them), a 0-1000 timestep and text features ``[B, T, 16]``. An 8×12 latent has 4×6 target tokens.

    Example:
        >>> tuple(tiny_joyimage_inputs(references=1)["hidden_states"].shape)
        (1, 2, 4, 1, 8, 12)
    """
    generator = torch.Generator().manual_seed(seed)
    items = () if references == 0 else (references + 1,)
    return {
        "hidden_states": torch.randn(batch_size, *items, 4, 1, height, width, generator=generator),
        "timestep": torch.linspace(300.0, 700.0, batch_size),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, JOYIMAGE_TEXT_DIM, generator=generator),
        "return_dict": False,
    }


def tiny_joyimage_pipeline(num_layers: int = 3, seed: int = 0, with_processor: bool = False) -> Any:
    """A random-weight ``JoyImageEditPipeline``: tiny two-layer ``Qwen3VLForConditionalGeneration`` (width 16) with a
    byte-level chat tokenizer, tiny Wan VAE (4 latent channels, ``vae_scale_factor_spatial`` 8), the tiny transformer.
    Without ``with_processor`` it has no Qwen3-VL processor and runs the text-to-image path only; with it, the
    tokenizer, encoder and processor are :func:`tiny_joyimage_edit_text_encoder`'s, and the editing path (prompt and
    reference ``image=``) runs as well.

    The pipeline snaps every request to its 1024-pixel buckets: a square request gives a 128×128 latent and 64×64
    image tokens (use ``output_type="latent"``: decoding 1024² pixels is slow on a CPU); a reference image is
    snapped the same way (64×64 reference tokens after the target's, 4 image tokens in the prompt).

    Example:
        >>> type(tiny_joyimage_pipeline()).__name__
        'JoyImageEditPipeline'
        >>> type(tiny_joyimage_pipeline(with_processor=True).processor).__mro__[1].__name__
        'Qwen3VLProcessor'
    """
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, JoyImageEditPipeline
    from transformers import Qwen3VLForConditionalGeneration

    if with_processor:
        tokenizer, text_encoder, processor = tiny_joyimage_edit_text_encoder(seed + 1)
    else:
        tokenizer, processor = tiny_byte_level_tokenizer(), None
        config = tiny_qwen3vl_config(len(tokenizer), JOYIMAGE_TEXT_DIM, 2)
        text_encoder = seeded_eval(seed + 1, Qwen3VLForConditionalGeneration, config)
    vae = seeded_eval(
        seed + 2,
        AutoencoderKLWan,
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    return quiet_pipeline(
        JoyImageEditPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=tiny_joyimage_transformer(num_layers=num_layers, seed=seed + 3),
            processor=processor,
        )
    )


def tiny_joyimage_edit_plus_transformer(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``JoyImageEditPlusTransformer3DModel`` (the tiny JoyImage Edit geometry; eval mode).

    Example:
        >>> type(tiny_joyimage_edit_plus_transformer()).__name__
        'JoyImageEditPlusTransformer3DModel'
    """
    return tiny_joyimage_transformer(num_layers=num_layers, seed=seed, plus=True)


def tiny_joyimage_edit_plus_inputs(
    batch_size: int = 1, text_tokens: int = 7, padded_text: int = 2, padded_patches: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Keyword inputs of a bare ``JoyImageEditPlusTransformer3DModel`` call, packed as ``JoyImageEditPlusPipeline``
    packs them: per sample a 4×6-token target, then a 2×4-token reference, then ``padded_patches`` padding patches
    (``hidden_states [B, 24 + 8 + pad, 4, 1, 2, 2]``, ``shape_list``), a 0-1000 timestep, text features
    ``[B, T, 16]`` whose last ``padded_text`` tokens are masked out.

    Example:
        >>> inputs = tiny_joyimage_edit_plus_inputs()
        >>> tuple(inputs["hidden_states"].shape), inputs["shape_list"]
        ((1, 35, 4, 1, 2, 2), [[(1, 4, 6), (1, 2, 4)]])
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = [(1, 4, 6), (1, 2, 4)]
    patches = sum(t * h * w for t, h, w in shapes)
    hidden = torch.randn(batch_size, patches + padded_patches, 4, 1, 2, 2, generator=generator)
    hidden[:, patches:] = 0  # padding patches, as the pipeline's zeros
    mask = torch.ones(batch_size, text_tokens, dtype=torch.long)  # [B, T]
    if padded_text > 0:
        mask[:, text_tokens - padded_text :] = 0
    return {
        "hidden_states": hidden,
        "timestep": torch.linspace(300.0, 700.0, batch_size),
        "encoder_hidden_states": torch.randn(batch_size, text_tokens, JOYIMAGE_TEXT_DIM, generator=generator),
        "encoder_hidden_states_mask": mask,
        "shape_list": [list(shapes) for _ in range(batch_size)],
        "return_dict": False,
    }


#: Qwen3-VL's vision special tokens, in the order the tiny vision tokenizer gives them ids (after the chat tokens).
QWEN3VL_VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def tiny_qwen3vl_processor(tokenizer: Any, patch_size: int = 16, merge_size: int = 2, max_pixels: int = 64 * 64) -> Any:
    """A ``Qwen3VLProcessor`` built in memory: the PIL-backend ``Qwen2VLImageProcessor`` (Qwen3-VL's patch 16,
    temporal patch 2, 2×2 merge) that shrinks every image to at most ``max_pixels`` (a 1024² image: 64×64 pixels,
    4×4 patches, 4 image tokens), the given tokenizer (which must know :data:`QWEN3VL_VISION_TOKENS`), a
    ``Qwen3VLVideoProcessor`` (never called: the JoyImage pipelines pass images only) and the tiny chat template.

    transformers 5.25 cannot construct a ``Qwen3VLProcessor`` without torchvision: ``ProcessorMixin`` type-checks the
    video processor against ``transformers.VideoProcessorMixin``, which the package exports only when torchvision is
    installed (the fallback lookup then fails on a placeholder mapping). The processor built here is therefore a
    subclass whose only change is that check: it checks the video processor against
    ``transformers.video_processing_utils.VideoProcessorMixin`` itself, every other argument as the stock class does.

    Example:
        >>> from PIL import Image
        >>> tokenizer = tiny_byte_level_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN3VL_VISION_TOKENS))
        >>> processor = tiny_qwen3vl_processor(tokenizer)
        >>> inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>a"], images=Image.new("RGB", (96, 96)),
        ...                    return_tensors="pt")
        >>> inputs["input_ids"].tolist(), inputs["image_grid_thw"].tolist()
        ([[5, 3, 3, 3, 3, 6, 71]], [[1, 4, 4]])
    """
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_processing_utils import VideoProcessorMixin

    class TinyQwen3VLProcessor(Qwen3VLProcessor):
        """``Qwen3VLProcessor`` whose video-processor type check works without torchvision."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name != "video_processor":
                return super().check_argument_for_proper_class(argument_name, argument)
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"Received a {type(argument).__name__} for argument video_processor.")
            return VideoProcessorMixin

    sizes = {"patch_size": patch_size, "merge_size": merge_size, "temporal_patch_size": 2}
    size = {"shortest_edge": (patch_size * merge_size) ** 2, "longest_edge": max_pixels}
    return TinyQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**sizes, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**sizes, size=size),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def tiny_joyimage_edit_text_encoder(seed: int = 0) -> tuple[Any, Any, Any]:
    """The tokenizer, text encoder and processor of the tiny JoyImage editing pipelines: the byte-level chat
    tokenizer with Qwen3-VL's vision tokens (ids 3-6), a tiny two-layer ``Qwen3VLForConditionalGeneration`` (width 16,
    one-layer vision tower of patch 16) whose image/video/vision ids are those tokens', and
    :func:`tiny_qwen3vl_processor` on that tokenizer.

    Example:
        >>> tokenizer, encoder, processor = tiny_joyimage_edit_text_encoder()
        >>> encoder.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == 3
        True
    """
    from transformers import Qwen3VLForConditionalGeneration

    tokenizer = tiny_byte_level_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN3VL_VISION_TOKENS))
    config = tiny_qwen3vl_config(len(tokenizer), JOYIMAGE_TEXT_DIM, 2)
    image, video, start, end = tokenizer.convert_tokens_to_ids(list(QWEN3VL_VISION_TOKENS))
    config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id = (
        image, video, start, end
    )
    encoder = seeded_eval(seed, Qwen3VLForConditionalGeneration, config)
    vision = config.vision_config
    processor = tiny_qwen3vl_processor(tokenizer, vision.patch_size, vision.spatial_merge_size)
    return tokenizer, encoder, processor


def tiny_joyimage_edit_plus_pipeline(num_layers: int = 3, seed: int = 0) -> Any:
    """A random-weight ``JoyImageEditPlusPipeline``: the components of ``tiny_joyimage_pipeline(with_processor=True)``
    (tiny Qwen3-VL encoder and processor, tiny Wan VAE) with a tiny ``JoyImageEditPlusTransformer3DModel``.

    Reference images are snapped to the pipeline's 1024-pixel buckets (a square one: 64×64 reference tokens, 4 image
    tokens in the prompt); the target takes ``height``/``width`` as given (32×48 pixels: 2×3 target tokens).

    Example:
        >>> type(tiny_joyimage_edit_plus_pipeline()).__name__
        'JoyImageEditPlusPipeline'
    """
    from diffusers import JoyImageEditPlusPipeline

    components = tiny_joyimage_pipeline(num_layers=num_layers, seed=seed, with_processor=True).components
    transformer = tiny_joyimage_edit_plus_transformer(num_layers=num_layers, seed=seed + 3)
    return quiet_pipeline(JoyImageEditPlusPipeline(**{**components, "transformer": transformer}))
