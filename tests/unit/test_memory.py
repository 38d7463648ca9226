"""conceptattention.memory: the run-size estimate behind the command line's --max-memory-gb (issue 16, item 4)."""

from __future__ import annotations

import pytest

from conceptattention.memory import (
    DEFAULT_MAX_MEMORY_GB,
    MemoryLimitError,
    ModelDims,
    check_run_memory,
    default_memory_limit_gb,
    estimate_run_memory,
    model_dims,
)
from conceptattention.testing import tiny_flux_pipeline


def test_terms_follow_the_sizes() -> None:
    dims = ModelDims(pixels_per_token=16, hidden=64, vae_channels=8, text_tokens=10, element_bytes=2)
    small = estimate_run_memory(height=256, width=256, concepts=3, dims=dims)
    assert small.tokens == 16 * 16 + 10 + 3
    assert small.images == 256 * 256 * 3 * 4 * 4
    assert small.vae == 256 * 256 * 8 * 2 * 3
    assert small.transformer == small.tokens * 64 * 2 * 12
    assert small.attention == small.tokens**2 * 2
    doubled = estimate_run_memory(height=512, width=256, concepts=3, dims=dims)
    assert doubled.images == 2 * small.images and doubled.attention > 3 * small.attention  # quadratic in tokens
    batched = estimate_run_memory(height=256, width=256, batch=4, concepts=3, dims=dims)
    assert batched.transformer == 4 * small.transformer and batched.images == small.images  # one image, 4 samples


def test_video_frames_count_with_temporal_compression_and_vae_chunks() -> None:
    dims = ModelDims(pixels_per_token=16, temporal_compression=4, vae_channels=128, element_bytes=2)
    video = estimate_run_memory(height=480, width=720, frames=49, dims=dims)
    assert video.tokens == 13 * 30 * 45 + 1
    assert video.vae == 8 * 480 * 720 * 128 * 2 * 3  # decoded in chunks of frames


def test_check_refuses_above_the_limit_with_the_numbers() -> None:
    estimate = estimate_run_memory(height=100_000, width=32, dims=ModelDims(pixels_per_token=2))
    with pytest.raises(MemoryLimitError, match=r"about 2\.6 TB \(mostly attention over 800,001 tokens\).*16 GB"):
        check_run_memory(estimate, 16)
    check_run_memory(estimate, None)  # no limit
    check_run_memory(estimate_run_memory(height=32, width=32), 0.001)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="height"):
        estimate_run_memory(height=0, width=32)


def test_model_dims_of_a_pipeline() -> None:
    pipeline = tiny_flux_pipeline()
    dims = model_dims(pipeline, text_tokens=32)
    transformer = pipeline.transformer.config
    assert dims.hidden == transformer.num_attention_heads * transformer.attention_head_dim
    assert dims.pixels_per_token == 2 * pipeline.vae_scale_factor
    assert dims.vae_channels == pipeline.vae.config.block_out_channels[0]
    assert dims.text_tokens == 32 and dims.element_bytes == 4


def test_default_limit_on_the_cpu() -> None:
    assert default_memory_limit_gb("cpu") == DEFAULT_MAX_MEMORY_GB
    assert default_memory_limit_gb("not a device") == DEFAULT_MAX_MEMORY_GB
