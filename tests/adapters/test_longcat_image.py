"""LongCat-Image adapter: the FLUX.1-clone battery on a tiny LongCat-Image model (text ids (0, i, i))."""

from __future__ import annotations

from diffusers.models.transformers.transformer_longcat_image import LongCatImageAttnProcessor

from conceptattention.testing_zoo import tiny_longcat_image_inputs, tiny_longcat_image_transformer

from .flux_like_battery import FluxLikeBattery


class TestLongCatImageBattery(FluxLikeBattery):
    """The shared battery on a tiny LongCat-Image (3 double blocks)."""

    family = "longcat_image"
    stock_processor = LongCatImageAttnProcessor
    concept_dim = 32
    tiny_transformer = tiny_longcat_image_transformer
    tiny_inputs = tiny_longcat_image_inputs
