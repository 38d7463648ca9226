"""The ShapesWorld text-to-image model: a standard diffusers ``FluxPipeline`` with tiny components.

Layout of a saved model folder (all weights as safetensors, loadable offline)::

    model_index.json             FluxPipeline
    scheduler/                   FlowMatchEulerDiscreteScheduler (shift 1, no dynamic shifting: schnell-like)
    vae/                         AutoencoderKL, one block level (vae_scale_factor 1), weights set to the identity map
    text_encoder/, tokenizer/    CLIPTextModel (pooled vector) + word-level tokenizer
    text_encoder_2/, tokenizer_2/ T5EncoderModel + word-level tokenizer
    transformer/                 FluxTransformer2DModel (patch 1 over 2x2-packed latents: 16 x 16 tokens for 32 x 32)
    shapesworld.json             settings applied by :func:`load_pipeline` (RoPE lever, default sizes, ...)

The RoPE lever (``rope_theta``, ``image_position_scale``) is not part of the diffusers model config: it is applied by
:func:`apply_position_lever` after loading (``transformer.pos_embed.theta`` and a removable forward pre-hook on
``transformer.pos_embed`` that scales the position ids), never by a modified model class.

Example:
    >>> from conceptattention.shapesworld.model import ModelConfig, build_pipeline
    >>> pipe = build_pipeline(ModelConfig.preset("tiny"))
    >>> type(pipe).__name__, pipe.vae_scale_factor
    ('FluxPipeline', 1)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from conceptattention.config import ConfigError, ModelDefaults, set_model_defaults
from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.render import IMAGE_SIZE


SETTINGS_FILE = "shapesworld.json"
"""Name of the settings file that :func:`load_pipeline` reads from a model folder."""

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapesworld"
"""Where the shipped model lives inside the package."""


class ModelError(ConceptAttentionError, ValueError):
    """Invalid model configuration or model folder."""


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of every component, and the settings stored in ``shapesworld.json``.

    Args:
        heads, head_dim: Transformer attention heads and head width (model width = ``heads * head_dim``).
        double_blocks, single_blocks: FLUX double-stream (joint) and single-stream block counts.
        axes_dims_rope: RoPE dimensions per position axis (must sum to ``head_dim``).
        t5_width, t5_layers, t5_heads, t5_ff: T5 encoder sizes (``joint_attention_dim`` = ``t5_width``).
        clip_width, clip_layers, clip_heads: CLIP text model sizes (``pooled_projection_dim`` = ``clip_width``).
        vae_channels, latent_channels: AutoencoderKL width (one block level, identity weights) and latent channels.
        image_size: Native resolution (pixels).
        rope_theta, image_position_scale: RoPE lever applied at load time (10000 and 1 = diffusers' defaults).
        max_sequence_length: T5 length the model is trained and meant to be called with.
        clip_max_length: CLIP tokenizer length.

    Example:
        >>> ModelConfig.preset("default").width
        160
    """

    heads: int = 5
    head_dim: int = 32
    double_blocks: int = 6
    single_blocks: int = 2
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    t5_width: int = 128
    t5_layers: int = 2
    t5_heads: int = 4
    t5_ff: int = 256
    clip_width: int = 64
    clip_layers: int = 2
    clip_heads: int = 2
    vae_channels: int = 12
    latent_channels: int = 3
    image_size: int = IMAGE_SIZE
    rope_theta: float = 100.0
    image_position_scale: float = 3.0
    max_sequence_length: int = 32
    clip_max_length: int = 32

    def __post_init__(self) -> None:
        if sum(self.axes_dims_rope) != self.head_dim:
            raise ModelError(f"axes_dims_rope {self.axes_dims_rope} must sum to head_dim={self.head_dim}.")
        if self.image_size % 2:
            raise ModelError(f"image_size must be even (2x2 latent packing), got {self.image_size}.")
        if self.rope_theta <= 1.0 or self.image_position_scale <= 0.0:
            raise ModelError("rope_theta must be > 1 and image_position_scale > 0.")
        if self.latent_channels != 3 or self.vae_channels % 4 or self.vae_channels < 12:
            raise ModelError("The identity VAE needs latent_channels=3 and vae_channels a multiple of 4, >= 12.")

    @property
    def width(self) -> int:
        """Transformer width ``heads * head_dim``."""
        return self.heads * self.head_dim

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """Named configurations: ``"default"`` (the shipped model), ``"small"`` (CPU experiments), ``"tiny"`` (tests).

        Example:
            >>> ModelConfig.preset("tiny").double_blocks
            2
        """
        presets: dict[str, dict[str, Any]] = {
            "default": {},
            "small": {"heads": 4, "double_blocks": 4, "single_blocks": 2},
            "tiny": {
                "heads": 2,
                "head_dim": 16,
                "axes_dims_rope": (4, 6, 6),
                "double_blocks": 2,
                "single_blocks": 1,
                "t5_width": 32,
                "t5_layers": 1,
                "t5_heads": 2,
                "t5_ff": 64,
                "clip_width": 32,
                "clip_layers": 1,
            },
        }
        if name not in presets:
            raise ModelError(f"Unknown model preset {name!r}; choose one of {', '.join(presets)}.")
        return cls(**{**presets[name], **overrides})

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_json` (unknown keys are ignored, missing keys take defaults)."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {
            key: tuple(value) if isinstance(value, list) else value for key, value in data.items() if key in known
        }
        return cls(**values)


IDENTITY_VAE_CONSTANT = 64.0
"""Constant carried by two channels of every group norm group of the identity VAE (see :func:`make_identity_vae`)."""


def build_vae(config: ModelConfig):
    """A one-level ``AutoencoderKL`` (no down-sampling: ``vae_scale_factor`` 1) set to the identity map.

    ``latent_channels`` = 3: the latent of a pixel is its RGB value in [-1, 1] (pixel-space packing inside a standard
    VAE container); its ``scaling_factor`` / ``shift_factor`` are placeholders until :func:`set_latent_statistics`.

    Example:
        >>> vae = build_vae(ModelConfig.preset("tiny"))
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> bool((vae.decode(vae.encode(x).latent_dist.mode()).sample - x).abs().max() < 1e-3)
        True
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(config.vae_channels,),
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=config.vae_channels // 4,
        sample_size=config.image_size,
        scaling_factor=1.0,
        shift_factor=0.0,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )
    make_identity_vae(vae)
    return vae.eval()


@torch.no_grad()
def make_identity_vae(vae: torch.nn.Module) -> None:
    """Set the weights of a one-level, attention-free ``AutoencoderKL`` so that encode and decode are the identity.

    Construction (both encoder and decoder): the input convolution writes, for each input channel ``c``, the group
    ``[x_c, -x_c, K, -K]`` (centre tap only; ``K`` = :data:`IDENTITY_VAE_CONSTANT` from the bias). Every ResNet block
    has its second convolution zeroed, so it is the identity. The output group norm then sees groups with mean 0 and
    standard deviation ``sigma ~= K / sqrt(2)`` (varies by < 1e-4 relative with the content), and the output
    convolution computes ``sigma * (silu(y) - silu(-y)) = sigma * y = x_c`` exactly (``silu(y) - silu(-y) = y``).
    The encoder's log-variance output is a constant -12 (posterior std 0.0025).

    Raises:
        ModelError: If the VAE does not have the required layout (one level, no mid attention, 4 channels per group).

    Example:
        >>> vae = build_vae(ModelConfig())  # build_vae calls make_identity_vae
        >>> make_identity_vae(vae)  # idempotent
    """
    encoder, decoder = vae.encoder, vae.decoder
    channels = encoder.conv_in.out_channels
    latent = vae.config.latent_channels
    if len(vae.config.block_out_channels) != 1 or vae.config.mid_block_add_attention:
        raise ModelError("make_identity_vae needs a one-level AutoencoderKL without mid-block attention.")
    if encoder.conv_norm_out.num_groups * 4 != channels or channels < 4 * max(3, latent):
        raise ModelError(f"make_identity_vae needs 4 channels per norm group and >= {4 * max(3, latent)} channels.")
    constant = IDENTITY_VAE_CONSTANT
    sigma = constant / 2**0.5

    def write_group_input(conv: torch.nn.Conv2d, inputs: int) -> None:
        conv.weight.zero_()
        conv.bias.zero_()
        centre = conv.kernel_size[0] // 2
        for group in range(channels // 4):
            if group < inputs:
                conv.weight[4 * group, group, centre, centre] = 1.0
                conv.weight[4 * group + 1, group, centre, centre] = -1.0
            conv.bias[4 * group + 2] = constant
            conv.bias[4 * group + 3] = -constant

    def write_group_output(conv: torch.nn.Conv2d, outputs: int) -> None:
        conv.weight.zero_()
        conv.bias.zero_()
        centre = conv.kernel_size[0] // 2
        for channel in range(outputs):
            conv.weight[channel, 4 * channel, centre, centre] = sigma
            conv.weight[channel, 4 * channel + 1, centre, centre] = -sigma

    for module in vae.modules():
        if type(module).__name__ == "ResnetBlock2D":
            module.conv2.weight.zero_()
            module.conv2.bias.zero_()
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
    write_group_input(encoder.conv_in, 3)
    write_group_output(encoder.conv_out, latent)  # channels [0, latent): mean; [latent, 2 latent): log-variance
    encoder.conv_out.bias[latent:] = -12.0
    write_group_input(decoder.conv_in, latent)
    write_group_output(decoder.conv_out, 3)


def build_transformer(config: ModelConfig):
    """The ``FluxTransformer2DModel`` denoiser (no guidance embedding, like FLUX.1-schnell)."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.latent_channels,
        num_layers=config.double_blocks,
        num_single_layers=config.single_blocks,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.heads,
        joint_attention_dim=config.t5_width,
        pooled_projection_dim=config.clip_width,
        guidance_embeds=False,
        axes_dims_rope=config.axes_dims_rope,
    )


def build_pipeline(config: ModelConfig, seed: int = 0):
    """A randomly initialised ShapesWorld ``FluxPipeline`` (all components in eval mode, float32, CPU).

    Args:
        config: Component sizes.
        seed: Seed of the weight initialisation.

    Returns:
        ``diffusers.FluxPipeline`` with the RoPE lever of ``config`` applied and ``pipe.shapesworld_config`` set.

    Example:
        >>> pipe = build_pipeline(ModelConfig.preset("tiny"), seed=0)
        >>> pipe.transformer.pos_embed.theta
        100.0
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from conceptattention.shapesworld.text import (
        build_clip_text_model,
        build_clip_tokenizer,
        build_t5_encoder,
        build_t5_tokenizer,
    )

    torch.manual_seed(seed)
    clip_tokenizer = build_clip_tokenizer(model_max_length=config.clip_max_length)
    t5_tokenizer = build_t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=build_vae(config).eval(),
        text_encoder=build_clip_text_model(
            len(clip_tokenizer), config.clip_width, config.clip_layers, config.clip_heads, config.clip_max_length
        ),
        tokenizer=clip_tokenizer,
        text_encoder_2=build_t5_encoder(
            len(t5_tokenizer), config.t5_width, config.t5_layers, config.t5_heads, config.t5_ff
        ),
        tokenizer_2=t5_tokenizer,
        transformer=build_transformer(config).eval(),
    )
    _configure(pipe, config)
    return pipe


# ---------------------------------------------------------------------------------------------------------------------
# RoPE lever


def apply_position_lever(transformer: torch.nn.Module, rope_theta: float, image_position_scale: float):
    """Set FLUX's RoPE base and scale the position ids, without changing the model class.

    diffusers' ``FluxPosEmbed`` uses base 10000; on a 16 x 16 token grid only about two frequencies per axis then vary,
    so attention cannot form sharp local geometry. This sets ``transformer.pos_embed.theta`` and registers a forward
    pre-hook on ``transformer.pos_embed`` that multiplies the ids by ``image_position_scale`` (text ids are zero, so
    only image ids change). Idempotent: a previous lever is removed first.

    Args:
        transformer: A ``FluxTransformer2DModel``.
        rope_theta: RoPE base.
        image_position_scale: Factor on the position ids.

    Returns:
        The hook handle (also stored as ``transformer.pos_embed._shapesworld_lever``).

    Example:
        >>> pipe = build_pipeline(ModelConfig.preset("tiny"))
        >>> remove_position_lever(pipe.transformer); pipe.transformer.pos_embed.theta
        10000
    """
    pos_embed = getattr(transformer, "pos_embed", None)
    if pos_embed is None or not hasattr(pos_embed, "theta"):
        raise ModelError("apply_position_lever needs a FluxTransformer2DModel (no pos_embed.theta found).")
    remove_position_lever(transformer)
    if not hasattr(pos_embed, "_shapesworld_default_theta"):
        pos_embed._shapesworld_default_theta = pos_embed.theta
    pos_embed.theta = rope_theta

    def scale_ids(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0] * image_position_scale,) + tuple(args[1:])

    handle = pos_embed.register_forward_pre_hook(scale_ids)
    pos_embed._shapesworld_lever = handle
    return handle


def remove_position_lever(transformer: torch.nn.Module) -> None:
    """Undo :func:`apply_position_lever` (restores the original theta and removes the hook); no-op if absent."""
    pos_embed = transformer.pos_embed
    handle = getattr(pos_embed, "_shapesworld_lever", None)
    if handle is not None:
        handle.remove()
        del pos_embed._shapesworld_lever
    if hasattr(pos_embed, "_shapesworld_default_theta"):
        pos_embed.theta = pos_embed._shapesworld_default_theta


def _configure(pipe: Any, config: ModelConfig) -> None:
    """Apply the settings of ``config`` to a loaded or freshly built pipeline."""
    apply_position_lever(pipe.transformer, config.rope_theta, config.image_position_scale)
    pipe.default_sample_size = config.image_size // pipe.vae_scale_factor  # instance attribute read by __call__
    # the T5 length of training: the library's explain path and concept encoding pad to the tokenizer's maximum
    pipe.tokenizer_2.model_max_length = config.max_sequence_length
    pipe.shapesworld_config = config


def set_latent_statistics(vae: torch.nn.Module, shift: float, scale: float) -> None:
    """Store the latent normalisation in the VAE config (FLUX convention: ``z = (mode - shift) * scale``).

    Example:
        >>> vae = build_vae(ModelConfig.preset("tiny"))
        >>> set_latent_statistics(vae, 0.27, 2.0); vae.config.scaling_factor
        2.0
    """
    vae.register_to_config(shift_factor=float(shift), scaling_factor=float(scale))


def recommended_call_kwargs(pipe: Any) -> dict[str, Any]:
    """Keyword arguments for ``pipe(...)`` that match training: size, T5 length and no guidance.

    Example:
        >>> recommended_call_kwargs(build_pipeline(ModelConfig.preset("tiny")))["height"]
        32
    """
    config: ModelConfig = getattr(pipe, "shapesworld_config", ModelConfig())
    return {
        "height": config.image_size,
        "width": config.image_size,
        "max_sequence_length": config.max_sequence_length,
        "guidance_scale": 0.0,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Save / load


def save_pipeline(
    pipe: Any,
    folder: str | Path,
    config: ModelConfig,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a model folder: ``pipe.save_pretrained`` (safetensors) plus ``shapesworld.json``.

    Args:
        pipe: The pipeline.
        folder: Destination (created; existing files are overwritten).
        config: Settings to store.
        extra: Additional JSON-serialisable entries for ``shapesworld.json`` (e.g. recommended step count).
        dtype: Storage dtype of the weights (``torch.float16`` halves the size; loading upcasts). The VAE is always
            stored in float32.

    Returns:
        The folder path.

    Example:
        >>> config = ModelConfig.preset("tiny")
        >>> save_pipeline(build_pipeline(config), "/tmp/sw_model", config)  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from diffusers.utils import logging as diffusers_logging

    originals = {name: next(module.parameters()).dtype for name, module in _modules(pipe).items()}
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # silences "modules that should be kept in float32: []" on .to(dtype)
    try:
        for name, module in _modules(pipe).items():
            module.to(torch.float32 if name == "vae" else dtype)  # the identity VAE stays exact in float32
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        for name, module in _modules(pipe).items():
            module.to(originals[name])
        diffusers_logging.set_verbosity(verbosity)
    _portable_tokenizer_class(folder)
    settings = {"format": "shapesworld-flux-1", "model": config.to_json(), **(extra or {})}
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def _portable_tokenizer_class(folder: Path) -> None:
    """Record the tokenizers as ``PreTrainedTokenizerFast`` (transformers 5 writes its alias ``TokenizersBackend``,
    which transformers 4 cannot load)."""
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    for name in ("tokenizer", "tokenizer_2"):
        if index.get(name) == ["transformers", "TokenizersBackend"]:
            index[name] = ["transformers", "PreTrainedTokenizerFast"]
        config_path = folder / name / "tokenizer_config.json"
        if config_path.is_file():
            tokenizer_config = json.loads(config_path.read_text())
            if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
                tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
                config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _modules(pipe: Any) -> dict[str, torch.nn.Module]:
    return {
        name: getattr(pipe, name)
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
    }


def read_settings(folder: str | Path) -> dict[str, Any]:
    """The parsed ``shapesworld.json`` of a model folder.

    Example:
        >>> read_settings(DEFAULT_MODEL_DIR)["model"]["image_size"]  # doctest: +SKIP
        32
    """
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        raise ModelError(f"{path} not found: {folder} is not a ShapesWorld model folder (see docs/shapesworld.md).")
    return json.loads(path.read_text())


def data_version(folder: str | Path | None = None) -> str:
    """The ShapesWorld data version a model folder was trained on (``shapesworld.json``: ``data.version``).

    Folders written before data versions existed record none: they were trained on ``"v1"``.

    Args:
        folder: A model folder (default: the shipped model).

    Example:
        >>> data_version()
        'v1'
    """
    settings = read_settings(DEFAULT_MODEL_DIR if folder is None else folder)
    version = settings.get("data", {}).get("version", "v1")
    from conceptattention.shapesworld.render import DATA_VERSIONS

    if version not in DATA_VERSIONS:
        raise ModelError(f"{Path(folder or DEFAULT_MODEL_DIR) / SETTINGS_FILE}: unknown data version {version!r}.")
    return version


def _dtype_keyword() -> str:
    """``dtype`` for diffusers >= 0.42 (``torch_dtype`` is deprecated there), ``torch_dtype`` before."""
    import diffusers

    major, minor = (int(part) for part in diffusers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"


def load_pipeline(
    path: str | Path | None = None, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
):
    """Load a ShapesWorld ``FluxPipeline`` offline (safetensors only) and apply its settings.

    Args:
        path: Model folder; ``None`` loads the model shipped in ``conceptattention/assets/shapesworld``.
        device: Where to put the pipeline.
        dtype: Compute dtype (weights stored in float16 are upcast).

    Returns:
        ``diffusers.FluxPipeline`` with ``pipe.shapesworld_config`` (a :class:`ModelConfig`),
        ``pipe.shapesworld_settings`` (the whole ``shapesworld.json``), the RoPE lever applied and
        ``pipe.default_sample_size`` set so that a call without ``height``/``width`` renders at the native size,
        ``tokenizer_2.model_max_length`` set to the T5 length of training, and the folder's recommended
        ConceptAttention layers and explain noise levels recorded on the transformer
        (:class:`~conceptattention.config.ModelDefaults`).
        Pass ``**recommended_call_kwargs(pipe)`` to calls.

    Example:
        >>> pipe = load_pipeline()  # doctest: +SKIP
        >>> image = pipe("a red car on the grass", **recommended_call_kwargs(pipe)).images[0]  # doctest: +SKIP
    """
    from diffusers import FluxPipeline

    folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if not (folder / "model_index.json").is_file():
        hint = (
            " The shipped model is not installed yet; train one with `python -m conceptattention.shapesworld.train`."
            if path is None
            else ""
        )
        raise ModelError(f"No model_index.json in {folder}: not a diffusers pipeline folder.{hint}")
    settings = read_settings(folder)
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        pipe = FluxPipeline.from_pretrained(
            folder, **{_dtype_keyword(): dtype}, use_safetensors=True, local_files_only=True
        )
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    for module in _modules(pipe).values():
        module.eval()
    config = ModelConfig.from_json(settings.get("model", {}))
    _configure(pipe, config)
    recommended = settings.get("recommended", {}).get("concept_attention")
    if recommended is not None:  # layers / noise levels validated for this model (docs/shapesworld.md §5)
        try:
            set_model_defaults(pipe.transformer, ModelDefaults.from_dict(recommended))
        except ConfigError as error:
            raise ModelError(f"{folder / SETTINGS_FILE}: invalid recommended.concept_attention: {error}") from error
    pipe.shapesworld_settings = settings
    return pipe.to(device)
