"""What a ShapesWorld training run reports besides its loss: the hardware and library versions, the FLOPs of one
training sample and the model FLOP utilisation, the AUROC of the EMA weights at checkpoints, and the
``loss_curve.png`` and ``samples.png`` written next to the saved model. Used by
:mod:`conceptattention.shapesworld.train`.
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from conceptattention.shapesworld.model import recommended_call_kwargs


__all__ = [
    "PEAK_TFLOPS",
    "SAMPLE_CAPTIONS",
    "checkpoint_metrics",
    "hardware_string",
    "peak_tflops",
    "trainable_modules",
    "training_flops_per_sample",
    "versions",
    "write_loss_curve",
    "write_samples",
]


SAMPLE_CAPTIONS: tuple[str, ...] = (
    "a red car on the grass under the yellow sun",
    "a red boat on the sea under a grey cloud",
    "a green tree and a blue house on the sand",
    "a pink flower with an orange sun",
    "a purple house on the grass and a white cloud",
    "an orange tree , a yellow car and a pink cloud",
    "a yellow boat on the sea",
    "sun",
)


def trainable_modules(pipe: Any) -> list[torch.nn.Module]:
    """The modules trained jointly: the transformer and both text encoders."""
    return [pipe.transformer, pipe.text_encoder_2, pipe.text_encoder]


def hardware_string(device: torch.device) -> str:
    """Human-readable description of the compute used."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def versions() -> dict[str, str]:
    """Versions of torch, diffusers, transformers and Python, for ``train_log.json``."""
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


@torch.no_grad()
def checkpoint_metrics(pipe: Any, scenes: int, version: str = "v1", seed: int = 0) -> dict[str, float | None]:
    """Object, sky+ground and colour AUROC of ``pipe`` on the first ``scenes`` ``test`` scenes (per-kind protocol).

    ConceptAttention with the library's default blocks through the real-image path at noise levels 0.3, 0.5 and
    0.7, concepts = the objects present + 2 absent objects + sky + ground (and the colours set). Used at every
    training checkpoint on the EMA weights; the numbers are for tracking, not for choosing settings.

    Example:
        >>> from conceptattention.shapesworld.model import load_pipeline
        >>> checkpoint_metrics(load_pipeline(), 2)["object.auroc"] > 0.5  # doctest: +SKIP
        True
    """
    from conceptattention import explain
    from conceptattention.evaluation.shapesworld_protocol import compute_metrics, protocol_concept_sets, scene_stats
    from conceptattention.shapesworld.dataset import ShapesWorldDataset

    data = ShapesWorldDataset("test", seed=seed, n=scenes, version=version, size=pipe.shapesworld_config.image_size)
    saved = pipe.tokenizer_2.model_max_length
    pipe.tokenizer_2.model_max_length = pipe.shapesworld_config.max_sequence_length
    rows = []
    try:
        for sample in data:
            sets = protocol_concept_sets(sample)
            maps = {
                concept_set.name: explain(
                    pipe, sample.pil(), list(concept_set.concepts), caption=sample.caption,
                    noise_level=[0.3, 0.5, 0.7], seed=0,
                ).tensor[:, 0]  # [C, 1, h, w] -> [C, h, w]
                for concept_set in sets
            }  # fmt: skip
            rows.append(scene_stats(maps, sets, sample))
    finally:
        pipe.tokenizer_2.model_max_length = saved
    metrics = compute_metrics(rows, resamples=100)
    return {key: metrics[key]["value"] for key in ("object.auroc", "background.auroc", "colour.auroc")}


PEAK_TFLOPS: dict[str, tuple[float, float]] = {"H100": (989.0, 494.7), "H200": (989.0, 494.7), "A100": (312.0, 156.0)}
"""Dense peak TFLOP/s (bf16, tf32) by GPU name fragment, for the model FLOP utilisation in ``train_log.json``."""


def training_flops_per_sample(pipe: Any, text_length: int, device: torch.device) -> float:
    """FLOPs of one training sample (forward + backward of both text encoders and the transformer), counted.

    Uses ``torch.utils.flop_counter.FlopCounterMode`` on a batch of one (matmuls, attention; elementwise work is not
    counted, as usual for model FLOP utilisation). The gradients are cleared afterwards.

    Example:
        >>> from conceptattention.shapesworld.model import ModelConfig, build_pipeline
        >>> training_flops_per_sample(build_pipeline(ModelConfig.preset("tiny")), 32, torch.device("cpu")) > 0
        True
    """
    from torch.utils.flop_counter import FlopCounterMode

    config = pipe.shapesworld_config
    side = config.image_size // 2
    ids = torch.zeros(1, text_length, dtype=torch.long, device=device)
    clip_ids = torch.zeros(1, config.clip_max_length, dtype=torch.long, device=device)
    latents = torch.zeros(1, side * side, 4 * config.latent_channels, device=device)  # [1, I, 4C]
    img_ids = pipe._prepare_latent_image_ids(1, side, side, device, torch.float32)  # [I, 3]
    with FlopCounterMode(display=False) as counter:
        embeds = pipe.text_encoder_2(ids).last_hidden_state  # [1, L, t5_width]
        pooled = pipe.text_encoder(clip_ids).pooler_output  # [1, clip_width]
        out = pipe.transformer(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                               timestep=torch.full((1,), 0.5, device=device), img_ids=img_ids,
                               txt_ids=torch.zeros(text_length, 3, device=device), return_dict=False)[0]  # fmt: skip
        out.float().square().mean().backward()
    for module in trainable_modules(pipe):
        module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """Dense peak TFLOP/s of the CUDA device from :data:`PEAK_TFLOPS` (None: not a known GPU, or not CUDA)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32) in PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else tf32
    return None


def write_loss_curve(history: list[list[float]], path: Path) -> None:
    """Plot the loss history (log scale) with matplotlib.

    Args:
        history: Rows ``[step, train_seconds, mean_loss]``.
        path: PNG file to write.

    Example:
        >>> write_loss_curve([[10, 1.0, 1.2], [20, 2.0, 0.8]], Path("/tmp/loss.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    if history:
        steps = [row[0] for row in history]
        losses = [row[2] for row in history]
        axis.plot(steps, losses, lw=0.8, color="tab:blue", alpha=0.5, label="mean loss per log interval")
        smoothed, value = [], losses[0]
        for loss in losses:
            value = 0.9 * value + 0.1 * loss
            smoothed.append(value)
        axis.plot(steps, smoothed, lw=1.5, color="tab:blue", label="smoothed")
        axis.set_yscale("log")
        axis.legend()
    axis.set_xlabel("step")
    axis.set_ylabel("rectified-flow MSE")
    axis.set_title("ShapesWorld training loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


@torch.no_grad()
def write_samples(pipe: Any, path: Path, num_inference_steps: int, seed: int) -> None:
    """Generate :data:`SAMPLE_CAPTIONS` (caption ``i`` with seed ``seed + i``) and save a captioned grid.

    Example:
        >>> from conceptattention.shapesworld.model import load_pipeline
        >>> write_samples(load_pipeline(), Path("/tmp/samples.png"), 20, 0)  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kwargs = recommended_call_kwargs(pipe)
    generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(len(SAMPLE_CAPTIONS))]
    images = pipe(
        list(SAMPLE_CAPTIONS),
        num_inference_steps=num_inference_steps,
        generator=generators,
        output_type="pt",
        **kwargs,
    ).images.cpu()  # [n, 3, S, S]
    columns = 4
    rows = math.ceil(len(SAMPLE_CAPTIONS) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), dpi=100)
    for axis, image, caption in zip(axes.flat, images, SAMPLE_CAPTIONS):
        axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")  # [S, S, 3]
        axis.set_title(caption, fontsize=7, wrap=True)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
