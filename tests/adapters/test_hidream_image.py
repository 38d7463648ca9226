"""HiDream-I1 adapter: the zoo battery on a tiny HiDream-I1 (3 double-stream blocks with a mixture-of-experts image
MLP, 1 single-stream block, one tapped Llama layer per block) and a tiny offline HiDreamImagePipeline (four text
encoders, batched CFG), the naive float64 reference for both conditionings, the per-block Llama-layer rebuild of the
concepts checked against a wrong variant, concept encoding against the pipeline's own encoders, non-square images
padded as the model pads them."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hidream_image import HiDreamAttnProcessor

from conceptattention import ConceptAttention, get_adapter
from conceptattention.testing import (
    HIDREAM_LLAMA_DIM,
    HIDREAM_LLAMA_LAYERS,
    HIDREAM_T5_DIM,
    tiny_hidream_image_inputs,
    tiny_hidream_image_pipeline,
    tiny_hidream_image_transformer,
)
from conceptattention.testing.battery import (
    assert_cfg_conditional_half,
    assert_concepts_permute,
    assert_reference_not_variant,
    assert_right_not_wrong,
    assert_subclassed_processor_refused,
    assert_t5_concept_means,
    layer_logits,
    make_generate,
    module_fixtures,
    seeded_embeds,
)
from conceptattention.testing.references.hidream_image import naive_hidream_scores
from conceptattention.testing.zoo_battery import StockGraphBreaksCompile, ZooBattery


GEN_KW = dict(height=16, width=16, num_inference_steps=2, output_type="pt", guidance_scale=1.0, max_sequence_length=32)
CFG_KW = dict(guidance_scale=3.0, negative_prompt="blurry")
#: the tiny model's concept width: T5 state, then one state per tapped Llama layer (4)
CONCEPT_DIM = HIDREAM_T5_DIM + HIDREAM_LLAMA_LAYERS * HIDREAM_LLAMA_DIM


class TestHiDreamImageBattery(StockGraphBreaksCompile, ZooBattery):
    """The shared battery on a tiny HiDream-I1 (square 8×8 latents: 4×4 image tokens). The mixture-of-experts MLP
    breaks the stock model's graph (``moe_infer`` calls ``.cpu().numpy()``)."""

    concept_dim = CONCEPT_DIM
    expected_grid = (1, 4, 4)
    tiny_transformer = tiny_hidream_image_transformer
    tiny_inputs = tiny_hidream_image_inputs
    naive_reference = naive_hidream_scores
    tiny_pipeline = tiny_hidream_image_pipeline
    pipeline_kwargs = GEN_KW
    pipeline_cfg_kwargs = CFG_KW
    expected_pipeline_grid = (1, 8, 8)

    def test_registry_and_stock_processor_kept(self, transformer):
        assert get_adapter(transformer).name == "hidream_image"
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
            processor = transformer.double_stream_blocks[0].block.attn1.processor
            assert type(processor.original) is HiDreamAttnProcessor
        single = transformer.single_stream_blocks[0].block.attn1.processor
        assert type(single) is HiDreamAttnProcessor  # single-stream blocks are never touched

    def test_prompt_conditioning_matches_reference(self, transformer):
        """``concept_conditioning="prompt"`` modulates concepts with the blocks' temb (pooled CLIP included), which
        differs from the default null-pooled modulation."""
        inputs = tiny_hidream_image_inputs()
        embeds = seeded_embeds(3, CONCEPT_DIM, seed=4)
        assert_reference_not_variant(
            transformer, inputs, embeds, [1], naive_hidream_scores,
            wrong=dict(conditioning="null_pooled"), right=dict(conditioning="prompt"), concept_conditioning="prompt",
        )

    def test_concepts_rebuilt_from_their_own_llama_layer_per_block(self, transformer):
        """Before block k the concepts' fresh tokens come from their Llama layer k: a reference fed the Llama layers
        in the wrong order is far off; permuting the concepts permutes the scores."""
        inputs = tiny_hidream_image_inputs()
        embeds = seeded_embeds(3, CONCEPT_DIM, seed=9)
        ours = layer_logits(transformer, inputs, embeds, [2])
        right = naive_hidream_scores(transformer, inputs, embeds, [2])[0, 0].float()
        layers = embeds[:, HIDREAM_T5_DIM:].unflatten(-1, (HIDREAM_LLAMA_LAYERS, HIDREAM_LLAMA_DIM))
        shuffled = torch.cat([embeds[:, :HIDREAM_T5_DIM], layers[:, [2, 1, 0, 3]].flatten(1)], dim=1)
        wrong = naive_hidream_scores(transformer, inputs, shuffled, [2])[0, 0].float()
        assert_right_not_wrong(ours, right, wrong)
        assert_concepts_permute(transformer, inputs, embeds, [2], ours, [2, 0, 1])

    def test_wrong_concept_width_refused(self, transformer):
        with pytest.raises(ValueError, match=r"HiDream-I1 concept embeddings must be \[C, 16 \+ 4·8\]"):
            with ConceptAttention(transformer, concept_embeds=torch.randn(2, HIDREAM_T5_DIM)):
                transformer(**tiny_hidream_image_inputs())

    def test_non_square_image_padded_as_the_model_pads_it(self, transformer):
        """An 8×12 latent (4×6 patches) is padded to max_resolution (64 rows) with zero keys: output bit-identical,
        maps on the 4×6 real patches, agreeing with the reference that pads the same way."""
        inputs = {**tiny_hidream_image_inputs(), "hidden_states": torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(3))}
        reference_output = self.run(transformer, inputs)
        embeds = seeded_embeds(3, CONCEPT_DIM, seed=2)
        with ConceptAttention(transformer, concept_embeds=embeds) as ca:
            assert torch.equal(self.run(transformer, inputs), reference_output)
        assert ca.maps.tensor.shape == (3, 1, 4, 6)
        for space in ("output", "value"):
            ours = layer_logits(transformer, inputs, embeds, [1], space=space)
            expected = naive_hidream_scores(transformer, inputs, embeds, [1], space=space)[0, 0].float()
            torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
        # the same call already patchified (hidden_states_masks, img_ids, img_sizes given): the same maps
        hidden, masks, sizes, ids = transformer.patchify(inputs["hidden_states"])  # [1, 64, 16], [1, 64], [1, 2]
        packed = {**inputs, "hidden_states": hidden, "hidden_states_masks": masks, "img_sizes": sizes, "img_ids": ids}
        with ConceptAttention(transformer, concept_embeds=embeds) as again:
            self.run(transformer, packed)
        torch.testing.assert_close(again.maps.tensor, ca.maps.tensor)

    def test_fused_qkv_projections(self):
        """diffusers cannot fuse HiDreamAttention's projections (its ``fuse_projections`` fails on the module), and
        HiDreamAttnProcessor uses the unfused ``to_q/k/v`` only: there is no fused set-up to support."""
        attn = self.make_transformer().double_stream_blocks[0].block.attn1
        with pytest.raises(AttributeError):
            attn.fuse_projections()

    def test_subclassed_processor_refused(self):
        model = self.make_transformer()
        attn = model.double_stream_blocks[1].block.attn1
        assert_subclassed_processor_refused(model, attn, HiDreamAttnProcessor, CONCEPT_DIM)


transformer, pipe = module_fixtures(TestHiDreamImageBattery)
generate = make_generate(GEN_KW)


def test_cfg_maps_come_from_the_conditional_half(pipe):
    assert_cfg_conditional_half(pipe, lambda pipe: generate(pipe, **CFG_KW), rtol=0, atol=0)


def test_non_square_request_bit_identical(pipe):
    """The pipeline rescales a 16×32 request to 10×22 pixels: a 5×11 patch grid padded to max_resolution."""
    reference = generate(pipe, height=16, width=32)
    with ConceptAttention(pipe, ["house", "sea"]) as ca:
        assert torch.equal(generate(pipe, height=16, width=32), reference)
    assert ca.maps.tensor.shape == (2, 1, 5, 11)


def test_concept_encoding_matches_the_pipelines_encoders(pipe):
    """A concept's embedding is its T5 state and its state in each tapped Llama layer (the pipeline's own
    ``_get_llama3_prompt_embeds`` layers), each the mean over the concept's own tokens."""
    concepts = ["red car", "sky"]
    encoded = get_adapter(pipe).encode_concepts(pipe, concepts, "mean")
    assert encoded.shape == (2, CONCEPT_DIM)
    assert_t5_concept_means(encoded[:, :HIDREAM_T5_DIM], pipe.tokenizer_3, pipe.text_encoder_3, concepts)
    for index, concept in enumerate(concepts):
        with torch.no_grad():
            llama = pipe._get_llama3_prompt_embeds([concept], max_sequence_length=32)  # [L, 1, 32, D_llama]
        count = len(pipe.tokenizer_4(concept).input_ids)  # the byte-level tokenizer adds no special token
        expected = llama[:, 0, :count].mean(1).flatten()  # [L·D_llama], layers 0..3 = llama_layers
        torch.testing.assert_close(encoded[index, HIDREAM_T5_DIM:], expected)
