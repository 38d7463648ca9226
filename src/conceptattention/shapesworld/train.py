"""Time-budgeted training of the ShapesWorld model (rectified flow, the FLUX objective).

One invocation does, inside its ``--minutes`` wall-time budget (counted from the start of :func:`main`):

1. sample a bank of training scenes and captions (deterministic per seed; processes in parallel for large banks),
   render it on the device and tokenize it once;
2. encode the bank with the VAE (an exact identity map, see ``model.make_identity_vae``) and, on the first
   invocation, fix the latent normalisation (``shift_factor`` = mean, ``scaling_factor`` = 1 / std);
3. train the FLUX transformer and both text encoders jointly with rectified flow:
   ``x_t = (1 - t) x0 + t eps`` with ``t ~ logit-normal(0, 1)``, target ``eps - x0`` (what ``FluxPipeline``'s
   ``FlowMatchEulerDiscreteScheduler`` integrates from t = 1 to 0), the pooled CLIP vector zeroed for 25 % of samples
   (ConceptAttention's "null pooled" concept conditioning) and 20 % of batches padded to a random T5 length up to 512
   (``FluxPipeline``'s default ``max_sequence_length`` pads to 512 with no attention mask);
4. write ``DIR/checkpoint.pt`` periodically (atomic) and at the end, then ``DIR/pipeline/`` (the FluxPipeline folder
   with EMA weights, ``shapesworld.json``, ``train_log.json``, ``loss_curve.png``, ``samples.png``).

``--resume`` continues from ``DIR/checkpoint.pt`` with a fresh budget (and a fresh bank of scenes).
``--init-from FOLDER`` starts from a saved model folder instead (the shipped model, or a previous run's
``pipeline/``: fp16 EMA weights, small enough to carry between machines); what is lost then is listed in
``docs/shapesworld.md`` §3 (optimizer moments, fp32 master weights, the EMA history, the warm-up).

The fast path for GPUs (all options, off by default so that earlier runs reproduce): ``--precision bf16`` (autocast;
norms, RoPE and the loss stay in float32, see :func:`keep_norms_in_fp32`), ``--compile`` (``torch.compile`` of the
transformer; long T5 paddings are bucketed to powers of two so that few shapes compile), fused AdamW on CUDA
(``foreach`` elsewhere), ``--lr-scaling sqrt|linear`` (learning rate scaled with ``batch / --base-batch-size``),
``--data-version v2`` and ``--checkpoint-eval-scenes N`` (object / sky+ground AUROC of the EMA weights on N ``test``
scenes at every checkpoint, the per-kind protocol of ``conceptattention evaluate``).

Example:
    python -m conceptattention.shapesworld.train --device cuda --minutes 5.5 --out runs/shapesworld --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from conceptattention.errors import ConceptAttentionError
from conceptattention.shapesworld.dataset import sample_record
from conceptattention.shapesworld.model import (
    SETTINGS_FILE,
    ModelConfig,
    build_pipeline,
    data_version,
    load_pipeline,
    recommended_call_kwargs,
    save_pipeline,
    set_latent_statistics,
)
from conceptattention.shapesworld.render import render_scenes


CHECKPOINT_NAME = "checkpoint.pt"
PIPELINE_DIR = "pipeline"
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


class TrainingError(ConceptAttentionError, ValueError):
    """Invalid training arguments (nothing is written when this is raised)."""


@dataclass
class TrainConfig:
    """Training hyper-parameters (all stored in ``train_log.json``).

    Example:
        >>> TrainConfig.for_device("cpu").batch_size
        32
    """

    preset: str = "default"
    seed: int = 0
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    pooled_drop: float = 0.25
    long_pad_fraction: float = 0.2
    long_pad_max: int = 512
    bank_size: int = 100_000
    checkpoint_minutes: float = 1.0
    log_every: int = 25
    eval_captions: int = 200
    sample_steps: int = 20
    position_lever: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data_version: str = "v1"
    precision: str = "fp32"
    compile: bool = False
    compile_backend: str = "inductor"
    lr_scaling: str = "none"
    base_batch_size: int = 256
    checkpoint_eval_scenes: int = 0
    init_from: str | None = None

    @property
    def effective_lr(self) -> float:
        """``lr`` scaled by the batch-size rule: ``lr * (batch_size / base_batch_size) ** k`` with k = 0 (``none``),
        1/2 (``sqrt``, the usual rule for Adam) or 1 (``linear``).

        Example:
            >>> TrainConfig(lr=1e-3, batch_size=1024, base_batch_size=256, lr_scaling="sqrt").effective_lr
            0.002
        """
        exponent = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}[self.lr_scaling]
        return self.lr * (self.batch_size / self.base_batch_size) ** exponent

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> TrainConfig:
        """Defaults for a device: large batches and bank on CUDA, small ones on CPU."""
        if device == "cpu":
            base = {"batch_size": 32, "bank_size": 2000, "eval_captions": 0, "warmup_steps": 50, "log_every": 5}
        else:
            base = {"log_every": 50}
        return cls(**{**base, **{key: value for key, value in overrides.items() if value is not None}})


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified-flow interpolation ``(1 - t) x0 + t noise`` (``t`` broadcast over all but the batch dimension).

    Example:
        >>> noisy_latents(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([0.25])).tolist()
        [[0.25, 0.25]]
    """
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - t) * x0 + t * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the transformer predicts: ``noise - x0`` (d x_t / d t), as ``FlowMatchEulerDiscreteScheduler``
    expects (its Euler step ``x + (sigma_next - sigma) * v`` goes from noise at sigma = 1 to data at sigma = 0).

    Example:
        >>> flow_target(torch.zeros(1), torch.ones(1)).tolist()
        [1.0]
    """
    return noise - x0


def _hardware_string(device: torch.device) -> str:
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


def _records(seed: int, start: int, count: int, version: str = "v1") -> list[tuple[Any, str]]:
    return [sample_record("train", seed, index, version) for index in range(start, start + count)]


def keep_norms_in_fp32(modules: Sequence[torch.nn.Module], device_type: str) -> contextlib.ExitStack:
    """Run every normalisation layer of ``modules`` in float32 with autocast off (undone when the stack closes).

    Under bf16 autocast, diffusers' q/k ``RMSNorm`` and the T5 layer norms receive bfloat16 inputs with float32
    weights (PyTorch warns "Mismatch dtype between input and weight ... Cannot dispatch to fused implementation");
    the statistics are then computed from bfloat16 values. Wrapping their ``forward`` keeps them in float32; the
    next matmul casts back to bfloat16. RoPE needs nothing: diffusers' ``apply_rotary_emb`` computes in float32.

    Example:
        >>> layer = torch.nn.LayerNorm(4)
        >>> with keep_norms_in_fp32([layer], "cpu"), torch.autocast("cpu", dtype=torch.bfloat16):
        ...     layer(torch.ones(1, 4, dtype=torch.bfloat16)).dtype
        torch.float32
    """
    names = {"RMSNorm", "T5LayerNorm", "FP32LayerNorm", "LayerNorm"}
    stack = contextlib.ExitStack()
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, torch.nn.LayerNorm | torch.nn.RMSNorm | torch.nn.GroupNorm) or type(
                layer
            ).__name__ in names:
                original = layer.forward

                def forward(hidden_states: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any):
                    with torch.autocast(device_type, enabled=False):
                        return _original(hidden_states.float(), *args, **kwargs)

                layer.forward = forward
                stack.callback(layer.__dict__.pop, "forward", None)
    return stack


@torch.no_grad()
def checkpoint_metrics(pipe: Any, scenes: int, version: str = "v1", seed: int = 0) -> dict[str, float | None]:
    """Object, sky+ground and colour AUROC of ``pipe`` on the first ``scenes`` ``test`` scenes (per-kind protocol).

    ConceptAttention with the library's default blocks through the real-image path at noise levels 0.3, 0.5 and
    0.7, concepts = the objects present + 2 absent objects + sky + ground (and the colours set). Used at every
    training checkpoint on the EMA weights; the numbers are for tracking, not for choosing settings.

    Example:
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
                ).maps[:, 0]  # [C, 1, h, w] -> [C, h, w]
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
    for module in _trainable(pipe):
        module.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32) in PEAK_TFLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else tf32
    return None


def _sample_bank_records(seed: int, count: int, workers: int, version: str = "v1") -> list[tuple[Any, str]]:
    """Scene specs and captions of ``count`` training samples, in forked worker processes when ``workers > 1``.

    Must run before CUDA is initialised. The workers only run pure-Python sampling; if they do not answer within
    two minutes they are terminated and the bank is sampled in this process instead.
    """
    if workers <= 1 or count < 4000:
        return _records(seed, 0, count, version)
    import multiprocessing

    chunk = math.ceil(count / (workers * 4))
    jobs = [(seed, start, min(chunk, count - start), version) for start in range(0, count, chunk)]
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        parts = pool.starmap_async(_records, jobs).get(timeout=120)
        pool.close()
    except multiprocessing.TimeoutError:
        print("[shapesworld] warning: scene workers timed out; sampling in-process", flush=True)
        pool.terminate()
        return _records(seed, 0, count, version)
    finally:
        pool.join()
    return [record for part in parts for record in part]


@dataclass
class _Bank:
    """Training data held on the device.

    Attributes:
        images: ``float32 [N, 3, S, S]`` in [-1, 1] (VAE input range).
        t5_ids: ``int64 [N, L]`` T5 token ids padded to the model's ``max_sequence_length``.
        clip_ids: ``int64 [N, Lc]`` CLIP token ids padded to the CLIP length.
        latents: ``float32 [N, I, 4C]`` packed, normalised latents (after the VAE phase).
    """

    images: torch.Tensor
    t5_ids: torch.Tensor
    clip_ids: torch.Tensor
    latents: torch.Tensor | None = None


def _build_bank(pipe: Any, records: list[tuple[Any, str]], config: ModelConfig, device: torch.device) -> _Bank:
    """Render and tokenize the bank (tokenization exactly as ``FluxPipeline`` does it)."""
    specs = [spec for spec, _ in records]
    captions = [caption for _, caption in records]
    chunk = 8192
    images = torch.cat(
        [render_scenes(specs[i : i + chunk], config.image_size, device).images for i in range(0, len(specs), chunk)]
    )  # [N, 3, S, S]
    t5_ids = pipe.tokenizer_2(
        captions, padding="max_length", max_length=config.max_sequence_length, truncation=True, return_tensors="pt"
    ).input_ids
    clip_ids = pipe.tokenizer(
        captions, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return _Bank(images=images * 2.0 - 1.0, t5_ids=t5_ids.to(device), clip_ids=clip_ids.to(device))


# ---------------------------------------------------------------------------------------------------------------------
# Latents


@torch.no_grad()
def _encode_bank(pipe: Any, bank: _Bank) -> tuple[float, float]:
    """Encode the bank with the (identity) VAE, set the latent normalisation if unset, pack the latents."""
    vae = pipe.vae
    modes = torch.cat(
        [vae.encode(bank.images[i : i + 4096]).latent_dist.mode() for i in range(0, len(bank.images), 4096)]
    )
    if vae.config.scaling_factor == 1.0 and vae.config.shift_factor == 0.0:
        set_latent_statistics(vae, float(modes.mean()), 1.0 / float(modes.std()))
    shift, scale = float(vae.config.shift_factor), float(vae.config.scaling_factor)
    latents = (modes - shift) * scale  # [N, C, S, S]
    batch, channels, height, width = latents.shape
    bank.latents = pipe._pack_latents(latents, batch, channels, height, width)  # [N, (S/2)*(S/2), 4C]
    return shift, scale


# ---------------------------------------------------------------------------------------------------------------------
# Main loop


def _lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Warm-up, constant, then a linear decay to 10 % over the last ``decay_fraction`` of the invocation's time."""
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    start = 1.0 - config.decay_fraction
    decay = 1.0 if progress <= start else max(0.1, 1.0 - 0.9 * (progress - start) / max(1e-6, config.decay_fraction))
    return config.lr * warm * decay


def _trainable(pipe: Any) -> list[torch.nn.Module]:
    return [pipe.transformer, pipe.text_encoder_2, pipe.text_encoder]


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m conceptattention.shapesworld.train",
        description="Train the ShapesWorld FLUX-architecture model within a wall-time budget.",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True, help="Where to train.")
    parser.add_argument("--minutes", type=float, required=True, help="Wall-time budget of this invocation.")
    parser.add_argument("--out", type=Path, required=True, help="Run folder (checkpoint, pipeline/).")
    parser.add_argument("--resume", action="store_true", help="Continue from OUT/checkpoint.pt.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--preset", choices=("default", "small", "tiny"), default="default", help="Model size.")
    parser.add_argument("--bank-size", type=int, default=None, help="Training scenes rendered per invocation.")
    parser.add_argument("--eval-captions", type=int, default=None, help="Fidelity check at the end (0 = skip).")
    parser.add_argument("--no-position-lever", action="store_true", help="Keep diffusers' RoPE (theta 10000, ids x1).")
    parser.add_argument("--long-pad-fraction", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
    parser.add_argument("--checkpoint-minutes", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="Also stop after this many steps (smoke tests).")
    parser.add_argument("--sample-steps", type=int, default=None, help="Euler steps for samples.png and fidelity.")
    fast = parser.add_argument_group("fast path and data (see the module docstring)")
    fast.add_argument("--data-version", choices=("v1", "v2"), default=None, help="ShapesWorld scene distribution.")
    fast.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16: autocast, fp32 norms/loss.")
    fast.add_argument("--compile", action="store_true", default=None, help="torch.compile the transformer.")
    fast.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor).")
    fast.add_argument("--lr-scaling", choices=("none", "sqrt", "linear"), default=None, help="LR vs batch-size rule.")
    fast.add_argument("--base-batch-size", type=int, default=None, help="Batch size at which --lr applies (256).")
    fast.add_argument("--checkpoint-eval-scenes", type=int, default=None, help="AUROC on N test scenes per checkpoint.")
    fast.add_argument("--init-from", type=Path, default=None, help="Start from a saved model folder (fp16 EMA).")
    return parser.parse_args(argv)


def _validate(args: argparse.Namespace) -> None:
    if args.minutes <= 0:
        raise TrainingError(f"--minutes must be positive, got {args.minutes}.")
    if args.max_steps is not None and args.max_steps < 1:
        raise TrainingError(f"--max-steps must be >= 1, got {args.max_steps}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise TrainingError(f"--batch-size must be >= 1, got {args.batch_size}.")
    checkpoint = args.out / CHECKPOINT_NAME
    if args.resume and not checkpoint.is_file():
        raise TrainingError(f"--resume given but {checkpoint} does not exist; drop --resume to start a new run.")
    if not args.resume and args.out.exists() and any(args.out.iterdir()):
        raise TrainingError(
            f"{args.out} is not empty; pass --resume to continue that run or choose a new --out folder."
        )
    if args.init_from is not None:
        if args.resume:
            raise TrainingError("--init-from starts a new run from a model folder; it cannot be combined with --resume.")
        if not (args.init_from / SETTINGS_FILE).is_file():
            raise TrainingError(f"--init-from {args.init_from} is not a ShapesWorld model folder (no {SETTINGS_FILE}).")
    if args.checkpoint_eval_scenes is not None and args.checkpoint_eval_scenes < 0:
        raise TrainingError(f"--checkpoint-eval-scenes must be >= 0, got {args.checkpoint_eval_scenes}.")
    if args.base_batch_size is not None and args.base_batch_size < 1:
        raise TrainingError(f"--base-batch-size must be >= 1, got {args.base_batch_size}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but torch sees no CUDA device; use --device cpu.")


def train(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Run one training invocation; returns the training log (also written to ``pipeline/train_log.json``).

    Args:
        args: Parsed command line (see :func:`main`).
        started: ``time.monotonic()`` at the start of the invocation (the budget counts from there).

    Example:
        >>> train(_parse(["--device", "cpu", "--minutes", "1", "--out", "runs/x"]), time.monotonic())  # doctest: +SKIP
    """
    deadline = started + args.minutes * 60.0
    device = torch.device(args.device)
    checkpoint_path = args.out / CHECKPOINT_NAME
    state: dict[str, Any] | None = (
        torch.load(checkpoint_path, map_location="cpu", weights_only=False) if args.resume else None
    )

    if state is not None:
        config = TrainConfig(**state["train_config"])
        if state.get("device") != device.type:  # device-dependent sizes follow the new device unless given
            defaults = TrainConfig.for_device(device.type)
            for key in ("batch_size", "bank_size", "eval_captions", "log_every"):
                setattr(config, key, getattr(defaults, key))
        for key, value in (
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("bank_size", args.bank_size),
            ("eval_captions", args.eval_captions),
            ("checkpoint_minutes", args.checkpoint_minutes),
            ("sample_steps", args.sample_steps),
            ("precision", args.precision),
            ("compile", args.compile),
            ("compile_backend", args.compile_backend),
            ("lr_scaling", args.lr_scaling),
            ("base_batch_size", args.base_batch_size),
            ("checkpoint_eval_scenes", args.checkpoint_eval_scenes),
        ):
            if value is not None:
                setattr(config, key, value)
        model_config = ModelConfig.from_json(state["model_config"])
    else:
        overrides = {
            "batch_size": args.batch_size,
            "lr": args.lr,
            "bank_size": args.bank_size,
            "eval_captions": args.eval_captions,
            "long_pad_fraction": args.long_pad_fraction,
            "checkpoint_minutes": args.checkpoint_minutes,
            "sample_steps": args.sample_steps,
            "data_version": args.data_version,
            "precision": args.precision,
            "compile": args.compile,
            "compile_backend": args.compile_backend,
            "lr_scaling": args.lr_scaling,
            "base_batch_size": args.base_batch_size,
            "checkpoint_eval_scenes": args.checkpoint_eval_scenes,
            "init_from": None if args.init_from is None else str(args.init_from),
        }
        config = TrainConfig.for_device(
            args.device, preset=args.preset, seed=args.seed, position_lever=not args.no_position_lever, **overrides
        )
        lever = {} if config.position_lever else {"rope_theta": 10000.0, "image_position_scale": 1.0}
        model_config = ModelConfig.preset(config.preset, **lever)
        if args.init_from is not None:
            config.preset = "from-folder"  # the architecture is the folder's (shapesworld.json), not a preset
            model_config = ModelConfig.from_json(json.loads((args.init_from / SETTINGS_FILE).read_text())["model"])
            if args.data_version is None:  # continue on the data the model was trained on unless told otherwise
                config.data_version = data_version(args.init_from)
    invocation = 0 if state is None else len(state["invocations"])
    print(
        f"[shapesworld] invocation {invocation}: preset={config.preset} batch={config.batch_size} "
        f"budget={args.minutes:.2f} min device={device}",
        flush=True,
    )

    # 1. Scenes (before CUDA initialisation: worker processes are forked).
    workers = min(16, os.cpu_count() or 1) if device.type == "cuda" else 1
    records = _sample_bank_records(config.seed * 1000 + invocation, config.bank_size, workers, config.data_version)
    print(f"[shapesworld] sampled {len(records)} scenes in {time.monotonic() - started:.1f} s", flush=True)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    prior: dict[str, Any] = {}
    if state is None and config.init_from is not None:
        pipe = load_pipeline(config.init_from, dtype=torch.float32)  # fp16 EMA weights, upcast to fp32 masters
        log_path = Path(config.init_from) / "train_log.json"
        prior = json.loads(log_path.read_text()) if log_path.is_file() else {}
    else:
        pipe = build_pipeline(model_config, seed=config.seed)
    if state is not None:
        pipe.transformer.load_state_dict(state["transformer"])
        pipe.text_encoder_2.load_state_dict(state["text_encoder_2"])
        pipe.text_encoder.load_state_dict(state["text_encoder"])
        pipe.vae.load_state_dict(state["vae"])
        set_latent_statistics(pipe.vae, state["latent_shift"], state["latent_scale"])
    pipe.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + invocation)
    host_rng = random.Random(config.seed * 7919 + invocation)
    bank = _build_bank(pipe, records, model_config, device)
    del records
    print(
        f"[shapesworld] pipeline built, bank rendered and tokenized at {time.monotonic() - started:.1f} s", flush=True
    )

    # 2. Latents: the VAE is the identity map (model.make_identity_vae); only its normalisation is fitted here.
    shift, scale = _encode_bank(pipe, bank)
    print(
        f"[shapesworld] latents encoded at {time.monotonic() - started:.1f} s (shift {shift:.4f}, scale {scale:.4f})",
        flush=True,
    )
    bank.images = bank.images[:0]  # free the pixels; only latents are needed from here on

    # 3. Transformer + text encoders.
    modules = _trainable(pipe)
    for module in modules:
        module.train()
    parameters = [p for module in modules for p in module.parameters()]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.effective_lr,
        betas=(0.9, 0.99),
        weight_decay=config.weight_decay,
        **({"fused": True} if fused else {"foreach": True}),
    )
    optimizer_name = "AdamW (fused)" if fused else "AdamW (foreach)"
    ema = [p.detach().clone() for p in parameters]
    step, history, total_train_seconds = int(prior.get("steps", 0)), list(prior.get("loss_history", [])), 0.0
    total_train_seconds = float(prior.get("train_seconds_total", 0.0))
    checkpoint_history: list[dict[str, Any]] = list(prior.get("checkpoint_metrics", []))
    warmup_start = step  # fresh AdamW moments (a new run or --init-from): the warm-up counts from here
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a resumed invocation may change the batch size or the rule
            group["lr"] = config.effective_lr
        for target, saved in zip(ema, state["ema"]):
            target.copy_(saved)
        step, history, total_train_seconds = state["step"], state["loss_history"], state["train_seconds"]
        warmup_start = int(state.get("warmup_start", 0))
        checkpoint_history = list(state.get("checkpoint_metrics", []))

    height = width = model_config.image_size // pipe.vae_scale_factor
    img_ids = pipe._prepare_latent_image_ids(1, height // 2, width // 2, device, torch.float32)  # [I, 3]
    budget = deadline - time.monotonic()
    reserve = min(
        0.3 * budget, 8.0 + (25.0 if config.eval_captions > 0 else 0.0) + (4.0 if device.type == "cpu" else 0.0)
    )
    train_start = time.monotonic()
    train_deadline = deadline - reserve
    if train_deadline <= train_start:
        print("[shapesworld] warning: no time left for denoiser training in this budget", flush=True)
    next_checkpoint = train_start + config.checkpoint_minutes * 60.0
    invocation_steps, running, running_count, throughput_start = 0, 0.0, 0, None

    def payload() -> dict[str, Any]:
        return {
            "train_config": asdict(config),
            "model_config": model_config.to_json(),
            "transformer": pipe.transformer.state_dict(),
            "text_encoder_2": pipe.text_encoder_2.state_dict(),
            "text_encoder": pipe.text_encoder.state_dict(),
            "vae": pipe.vae.state_dict(),
            "latent_shift": shift,
            "latent_scale": scale,
            "optimizer": optimizer.state_dict(),
            "ema": [tensor.detach().cpu() for tensor in ema],
            "step": step,
            "loss_history": history,
            "train_seconds": total_train_seconds + (time.monotonic() - train_start),
            "device": device.type,
            "invocations": (state["invocations"] if state is not None else prior.get("invocations", []))
            + [{"minutes": args.minutes}],
            "checkpoint_metrics": checkpoint_history,
            "warmup_start": warmup_start,
        }

    def evaluate_checkpoint() -> None:
        if config.checkpoint_eval_scenes <= 0:
            return
        live = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for parameter, average in zip(parameters, ema):
                parameter.copy_(average)
        for module in modules:
            module.eval()
        eval_started = time.monotonic()
        try:
            metrics = checkpoint_metrics(pipe, config.checkpoint_eval_scenes, config.data_version)
        finally:
            with torch.no_grad():
                for parameter, value in zip(parameters, live):
                    parameter.copy_(value)
            for module in modules:
                module.train()
        checkpoint_history.append({"step": step, **metrics, "seconds": round(time.monotonic() - eval_started, 2)})
        print(f"[shapesworld] checkpoint metrics: {json.dumps(checkpoint_history[-1])}", flush=True)

    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bf16" else contextlib.nullcontext()
    )
    norms_fp32 = keep_norms_in_fp32(modules, device.type) if config.precision == "bf16" else contextlib.ExitStack()
    forward = (
        torch.compile(pipe.transformer, backend=config.compile_backend, dynamic=False)
        if config.compile
        else pipe.transformer
    )

    flops_per_sample = training_flops_per_sample(pipe, model_config.max_sequence_length, device)
    max_steps = args.max_steps if args.max_steps is not None else math.inf
    while time.monotonic() < train_deadline and invocation_steps < max_steps:
        progress = (time.monotonic() - train_start) / max(1e-6, train_deadline - train_start)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(config, step - warmup_start, progress) * config.effective_lr / config.lr
        index = torch.randint(bank.latents.shape[0], (config.batch_size,), device=device, generator=generator)
        x0 = bank.latents[index]  # [B, I, 4C]
        t5_ids = bank.t5_ids[index]  # [B, L]
        if host_rng.random() < config.long_pad_fraction:  # host-side draws: no device synchronisation
            low, high = math.log(model_config.max_sequence_length + 1), math.log(config.long_pad_max)
            target = int(math.exp(host_rng.uniform(low, high)))
            if config.compile:  # few distinct shapes: bucket the padded length to a power of two
                target = min(config.long_pad_max, 1 << (target - 1).bit_length())
            padding = torch.full(
                (t5_ids.shape[0], target - t5_ids.shape[1]),
                pipe.tokenizer_2.pad_token_id,
                dtype=t5_ids.dtype,
                device=device,
            )
            t5_ids = torch.cat([t5_ids, padding], dim=1)  # [B, L'] right padding, as the tokenizer pads
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.sigmoid(torch.randn(config.batch_size, generator=generator, device=device))
        keep_pooled = (torch.rand(config.batch_size, generator=generator, device=device) >= config.pooled_drop).float()
        with autocast:
            prompt_embeds = pipe.text_encoder_2(t5_ids).last_hidden_state  # [B, L', t5_width]
            pooled = pipe.text_encoder(bank.clip_ids[index]).pooler_output * keep_pooled[:, None]  # [B, clip_width]
            prediction = forward(
                hidden_states=noisy_latents(x0, noise, t),
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled,
                timestep=t,
                img_ids=img_ids,
                txt_ids=torch.zeros(t5_ids.shape[1], 3, device=device),
                return_dict=False,
            )[0]
        loss = F.mse_loss(prediction.float(), flow_target(x0, noise))  # the loss in float32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in parameters], 1.0 - decay)
        step += 1
        invocation_steps += 1
        running += loss.detach()
        running_count += 1
        if invocation_steps == 10:
            if device.type == "cuda":
                torch.cuda.synchronize()
            throughput_start = time.monotonic()
        if step % config.log_every == 0:
            mean_loss = float(running) / running_count
            elapsed = total_train_seconds + time.monotonic() - train_start
            history.append([step, round(elapsed, 2), round(mean_loss, 5)])
            running, running_count = 0.0, 0
            print(
                f"[shapesworld] step {step} loss {mean_loss:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"elapsed {time.monotonic() - started:.0f} s",
                flush=True,
            )
        if time.monotonic() >= next_checkpoint:
            evaluate_checkpoint()
            _save_checkpoint(checkpoint_path, payload())
            next_checkpoint = time.monotonic() + config.checkpoint_minutes * 60.0

    if running_count:
        history.append(
            [
                step,
                round(total_train_seconds + time.monotonic() - train_start, 2),
                round(float(running) / running_count, 5),
            ]
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    measured_steps = invocation_steps - 10
    steps_per_second = (
        (measured_steps / (time.monotonic() - throughput_start)) if throughput_start and measured_steps > 0 else None
    )
    norms_fp32.close()
    evaluate_checkpoint()
    for module in modules:
        module.eval()
    _save_checkpoint(checkpoint_path, payload())

    # 4. Export with EMA weights.
    with torch.no_grad():
        for parameter, average in zip(parameters, ema):
            parameter.copy_(average)
    log = {
        "train_config": asdict(config),
        "model_config": model_config.to_json(),
        "seed": config.seed,
        "steps": step,
        "steps_this_invocation": invocation_steps,
        "steps_per_second": None if steps_per_second is None else round(steps_per_second, 2),
        "train_seconds_total": round(total_train_seconds + (time.monotonic() - train_start), 1),
        "wall_seconds_this_invocation": None,
        "budget_minutes_this_invocation": args.minutes,
        "invocations": payload()["invocations"],
        "hardware": _hardware_string(device),
        "device": device.type,
        "versions": _versions(),
        "vae": {"kind": "analytic identity AutoencoderKL", "latent_shift": shift, "latent_scale": scale},
        "parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("transformer", "text_encoder_2", "text_encoder", "vae")
        },
        "loss_history": history,
        "loss_history_columns": ["step", "train_seconds", "mean_loss"],
        "checkpoint_metrics": checkpoint_history,
        "fast_path": {
            "precision": config.precision,
            "compile": config.compile_backend if config.compile else None,
            "optimizer": optimizer_name,
            "effective_lr": config.effective_lr,
            "samples_per_second": None if steps_per_second is None else round(steps_per_second * config.batch_size, 1),
            "flops_per_sample": flops_per_sample,
            "achieved_tflops": None
            if steps_per_second is None
            else round(flops_per_sample * steps_per_second * config.batch_size / 1e12, 3),
            "peak_tflops": _peak_tflops(device, config.precision),
            "model_flop_utilisation": None
            if steps_per_second is None or _peak_tflops(device, config.precision) is None
            else round(flops_per_sample * steps_per_second * config.batch_size / 1e12 / _peak_tflops(device, config.precision), 4),
        },
        "init_from": config.init_from,
    }
    pipe.set_progress_bar_config(disable=True)
    folder = args.out / PIPELINE_DIR
    extra = {
        "data": {"version": config.data_version},
        "recommended": {"num_inference_steps": config.sample_steps, **recommended_call_kwargs(pipe)},
    }
    save_pipeline(pipe, folder, model_config, extra=extra, dtype=torch.float16)
    write_loss_curve(history, folder / "loss_curve.png")
    write_samples(pipe, folder / "samples.png", config.sample_steps, config.seed)
    if config.eval_captions > 0 and time.monotonic() < deadline - 5.0:
        from conceptattention.shapesworld.fidelity import evaluate_fidelity

        report = evaluate_fidelity(
            pipe, n=config.eval_captions, seed=config.seed, num_inference_steps=config.sample_steps, batch_size=100
        )
        log["fidelity"] = report.summary()
        print(f"[shapesworld] fidelity: {json.dumps(log['fidelity'])}", flush=True)
    log["wall_seconds_this_invocation"] = round(time.monotonic() - started, 1)
    (folder / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(
        f"[shapesworld] done: {step} steps ({invocation_steps} now, {log['steps_per_second']} steps/s), "
        f"wall {log['wall_seconds_this_invocation']} s -> {folder}",
        flush=True,
    )
    return log


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


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


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (also wired as ``conceptattention train-toy``).

    Example:
        >>> main(["--device", "cpu", "--minutes", "1", "--out", "runs/toy", "--preset", "tiny"])  # doctest: +SKIP
        0
    """
    started = time.monotonic()
    args = _parse(argv)
    _validate(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train(args, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
