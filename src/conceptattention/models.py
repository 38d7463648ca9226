"""Loading pipelines for the CLI and the app: the embedded default, local folders and hub ids.

Weights load as safetensors only unless the caller opts in to pickle files, and remote code is never trusted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConceptAttentionError


DEFAULT_MODEL = "shapesworld"

#: Short names for public checkpoints (resolved to hub ids; loading them needs the weights in the local HF cache
#: or network access).
MODEL_ALIASES: dict[str, str] = {
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd3.5-large": "stabilityai/stable-diffusion-3.5-large",
    "sd3.5-large-turbo": "stabilityai/stable-diffusion-3.5-large-turbo",
    "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "cogvideox-2b": "THUDM/CogVideoX-2b",
    "cogvideox-5b": "THUDM/CogVideoX-5b",
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelLoadError(ConceptAttentionError, ValueError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A pipeline plus what the CLI needs to know about it.

    Attributes:
        pipeline: The diffusers pipeline.
        name: What the user asked for (alias, folder or hub id).
        description: One line for logs and settings files.
        defaults: Generation defaults of this model (height, width, steps, guidance_scale, prompt, concepts...).
        notice: A message to show the user about the model, or None.
        vocabulary: The words the model knows, when it declares them (the shipped ShapesWorld toy model); None for
            real models, which accept any text. See :func:`check_vocabulary`.
    """

    pipeline: Any
    name: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    notice: str | None = None
    vocabulary: tuple[str, ...] | None = None


class UnknownWordsError(ConceptAttentionError, ValueError):
    """A concept uses words outside the vocabulary the model declares."""


def check_vocabulary(concepts: Sequence[str], vocabulary: Sequence[str] | None) -> None:
    """Refuse concepts with words outside a model's declared vocabulary (no vocabulary: anything goes).

    A concept is split at whitespace; every word, lower-cased, must be in the vocabulary. Punctuation, emoji and
    several concepts glued with commas (``"boat,sea,sky"``) are therefore refused, not silently mapped.

    Args:
        concepts: The concepts.
        vocabulary: :attr:`LoadedModel.vocabulary`.

    Raises:
        UnknownWordsError: Naming the concept, its unknown words and the vocabulary.

    Example:
        >>> check_vocabulary(["red boat", "sea"], ("boat", "red", "sea"))
        >>> check_vocabulary(["dragon"], ("boat", "red", "sea"))
        Traceback (most recent call last):
        ...
        conceptattention.models.UnknownWordsError: The concept 'dragon' uses words this model does not know ('dragon')...
    """
    if vocabulary is None:
        return
    known = {word.lower() for word in vocabulary}
    for concept in concepts:
        unknown = [word for word in concept.lower().split() if word not in known]
        if unknown:
            hint = ""
            if re.search(r"[,;]", concept):
                parts = " ".join(part for part in re.split(r"[\s,;]+", concept) if part)
                hint = f" Give each concept as a separate word on the command line (--concepts {parts})."
            raise UnknownWordsError(
                f"The concept {concept!r} uses words this model does not know "
                f"({', '.join(repr(word) for word in unknown)}); it knows only: {', '.join(vocabulary)}.{hint}"
            )


def shapesworld_vocabulary() -> tuple[str, ...]:
    """The words of the ShapesWorld toy model (its caption words).

    Example:
        >>> "boat" in shapesworld_vocabulary()
        True
    """
    from .shapesworld import CAPTION_WORDS

    return tuple(word for word in CAPTION_WORDS if word.isalpha())


def check_device(device: str) -> None:
    """Refuse a device that does not exist here, with one line that says what to use instead.

    Raises:
        ModelLoadError: Unparseable name, no CUDA (or MPS) device, or a CUDA index beyond the devices present.

    Example:
        >>> check_device("cpu")
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        conceptattention.models.ModelLoadError: Unknown device 'gpu'; use cpu, cuda, cuda:N or mps.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch build has no CUDA support" if torch.version.cuda is None else "torch sees no GPU"
            raise ModelLoadError(f"--device {device}: no CUDA device is available ({reason}); use --device cpu.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})."
            )
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError(f"--device {device}: no Apple MPS device is available here; use --device cpu.")
    elif parsed.type != "cpu":
        raise ModelLoadError(f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps.")


def parse_dtype(name: str | None, device: str) -> torch.dtype:
    """``"bf16"`` → ``torch.bfloat16``; None → float32 on CPU, bfloat16 elsewhere."""
    if name is None:
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ModelLoadError(f"Unknown dtype {name!r}; choose one of {', '.join(sorted(DTYPES))}.")
    return DTYPES[name]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name) or Path(name).exists()


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and not Path(name).exists()


#: Prompt and concepts of the main job on the shipped model (all words of its vocabulary).
SHAPESWORLD_EXAMPLE = {
    "prompt": "a red boat on the sea under a yellow sun",
    "concepts": ["boat", "sea", "sun"],
}


def shipped_model_dir() -> Path:
    """Folder of the shipped ShapesWorld pipeline inside the package."""
    return Path(__file__).resolve().parent / "assets" / "shapesworld"


def load_embedded_default(device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """The model shipped with the package: the ShapesWorld toy pipeline in ``assets/shapesworld``.

    Raises:
        ModelLoadError: The shipped weights are missing (a broken installation): the message names the folder and
            how to repair it, or to pass ``--model`` / ``name`` instead.
    """
    folder = shipped_model_dir()
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"The shipped ShapesWorld model is missing from {folder} (no model_index.json): this installation of "
            "conceptattention is incomplete. Reinstall the package (pip install --force-reinstall conceptattention), "
            "or name a model explicitly (--model FOLDER_OR_HUB_ID)."
        )
    from .shapesworld import load_pipeline as load_shapesworld
    from .shapesworld import recommended_call_kwargs

    pipeline = load_shapesworld(folder, device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=False)
    recommended = json.loads((folder / "shapesworld.json").read_text()).get("recommended", {})
    recommended.pop("concept_attention", None)  # method settings: already recorded on the transformer
    defaults = {**recommended, **recommended_call_kwargs(pipeline), **SHAPESWORLD_EXAMPLE}
    return LoadedModel(
        pipeline,
        DEFAULT_MODEL,
        "ShapesWorld toy FLUX-architecture model (shipped)",
        defaults,
        vocabulary=shapesworld_vocabulary(),
    )


def load_model(
    name: str | None = None,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    offload: str = "none",
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a pipeline by alias, local folder or hub id.

    Args:
        name: ``None``/``"shapesworld"`` for the embedded default; an alias from :data:`MODEL_ALIASES`; a local
            diffusers folder (works offline); or a hub id (``"org/name"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` (default: float32 on CPU, bfloat16 elsewhere).
        offload: ``"none"``, ``"model"`` (``enable_model_cpu_offload``) or ``"sequential"``.
        allow_pickle: Allow ``.bin``/``.ckpt`` weights (pickle can run code; off by default).

    Returns:
        :class:`LoadedModel`.

    Raises:
        ModelLoadError: missing folder, not a diffusers pipeline, unavailable hub id, bad option, a device that is
            not available (checked first).

    Example:
        >>> load_model("./no/such/folder")
        Traceback (most recent call last):
        ...
        conceptattention.models.ModelLoadError: No model folder at './no/such/folder'...
    """
    if offload not in ("none", "model", "sequential"):
        raise ModelLoadError(f"offload must be 'none', 'model' or 'sequential', got {offload!r}.")
    check_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else parse_dtype(dtype, device.split(":")[0])
    if name is None or name == DEFAULT_MODEL:
        loaded = load_embedded_default(device=device, dtype=torch_dtype)
        return loaded
    from diffusers import DiffusionPipeline

    source = MODEL_ALIASES.get(name, name)
    local = Path(os.path.expanduser(source))
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype, "trust_remote_code": False}
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    if local.exists() or _looks_like_path(source):
        if not local.is_dir():
            raise ModelLoadError(f"No model folder at {name!r} (it does not exist or is not a folder).")
        if not (local / "model_index.json").is_file():
            raise ModelLoadError(
                f"{name!r} is not a diffusers pipeline folder (no model_index.json); save one with "
                "`pipe.save_pretrained(folder)`."
            )
        kwargs["local_files_only"] = True
        source = str(local)
    try:
        pipeline = DiffusionPipeline.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        hint = ""
        if "safetensors" in str(error).lower() and not allow_pickle:
            hint = " The checkpoint has no safetensors weights; pass --allow-pickle only if you trust its source."
        raise ModelLoadError(f"Could not load {name!r}: {error}.{hint}") from error
    if offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=False)
    vocabulary = shapesworld_vocabulary() if (local / "shapesworld.json").is_file() else None
    return LoadedModel(pipeline, name, f"{type(pipeline).__name__} from {source}", vocabulary=vocabulary)
