"""The training data of a ShapesWorld run: a bank of sampled scenes and captions (in forked worker processes for
large banks), rendered on the device, tokenized once as ``FluxPipeline`` does, then encoded with the identity VAE
into packed, normalised latents. Used by :mod:`conceptattention.shapesworld.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from conceptattention.shapesworld.dataset import sample_record
from conceptattention.shapesworld.model import ModelConfig, set_latent_statistics
from conceptattention.shapesworld.render import render_scenes


__all__ = ["Bank", "build_bank", "encode_bank", "sample_bank_records"]


def _records(seed: int, start: int, count: int, version: str = "v1") -> list[tuple[Any, str]]:
    """``(spec, caption)`` of training samples ``start .. start + count - 1``."""
    return [sample_record("train", seed, index, version) for index in range(start, start + count)]


def sample_bank_records(seed: int, count: int, workers: int, version: str = "v1") -> list[tuple[Any, str]]:
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
class Bank:
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


def build_bank(pipe: Any, records: list[tuple[Any, str]], config: ModelConfig, device: torch.device) -> Bank:
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
    return Bank(images=images * 2.0 - 1.0, t5_ids=t5_ids.to(device), clip_ids=clip_ids.to(device))


@torch.no_grad()
def encode_bank(pipe: Any, bank: Bank) -> tuple[float, float]:
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
