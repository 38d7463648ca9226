"""The adapter battery for the zoo adapters (docs/models.md): the shared battery, with the restoration and fused-QKV
checks working on the attention modules directly, since several of these transformers (Bria, Ovis-Image, CogView4,
Mochi) lack diffusers' ``AttentionMixin`` (``attn_processors``, ``fuse_qkv_projections``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conceptattention import ConceptAttention, get_adapter

from .battery import AdapterBattery


def attention_processors(transformer: Any) -> dict[str, Any]:
    """Every attention module's processor by module path."""
    return {name: module.processor for name, module in transformer.named_modules() if hasattr(module, "processor")}


class ZooBattery(AdapterBattery):
    """:class:`AdapterBattery` whose restoration check does not need ``attn_processors`` (it reads each attention
    module's processor)."""

    def processors(self, transformer: Any) -> dict[str, Any]:
        return attention_processors(transformer)

    def test_fused_qkv_projections(self):
        """Fused QKV projections (``fuse_qkv_projections()``, or each joint attention's ``fuse_projections()`` where
        the model has no ``AttentionMixin``): outputs stay bit-identical to the fused model's and the maps match the
        unfused ones (same weights). MochiAttention has no fused variant in diffusers: skipped there."""
        model = self.make_transformer()  # a fresh one: fusing changes the module
        adapter = get_adapter(model)
        attention = [getattr(block, adapter.attention_attribute) for block in adapter.joint_blocks(model)]
        if not hasattr(model, "fuse_qkv_projections") and not hasattr(attention[0], "fuse_projections"):
            pytest.skip(f"diffusers has no fused QKV projections for {type(attention[0]).__name__}")
        inputs = self.make_inputs()
        with ConceptAttention(model, concept_embeds=self.embeds(), softmax=False) as unfused:
            self.run(model, inputs)
        if hasattr(model, "fuse_qkv_projections"):
            model.fuse_qkv_projections()
        else:
            for module in attention:
                module.fuse_projections()
        # (diffusers' fuse_qkv_projections() leaves legacy ``Attention`` modules, e.g. HunyuanImage's, unfused: then
        # this checks that the call is accepted)
        reference = self.run(model, inputs)
        with ConceptAttention(model, concept_embeds=self.embeds(), softmax=False) as fused:
            output = self.run(model, inputs)
        assert torch.equal(reference, output)
        torch.testing.assert_close(fused.maps.logits, unfused.maps.logits, rtol=1e-4, atol=1e-5)


class StockGraphBreaksCompile:
    """Whole-model ``torch.compile`` check for transformers whose own forward already breaks the graph (Mochi's
    per-sample ``nonzero``, HunyuanVideo 1.5's ``if torch.all(image_embeds == 0)``): put before the battery in the
    bases. The concept branch must add no graph break of its own and at most one maps-on variant per graph of the
    stock model; a second ``with`` block reuses them (the battery's ``test_compiled_whole_model`` with these
    counts)."""

    def check_compiled_graphs(self, counters: Any, graphs_off: int, breaks_off: set, graphs_on: list[int]) -> None:
        assert graphs_on[1] == graphs_on[0] <= 2 * graphs_off, dict(counters["stats"])
        new_breaks = set(counters["graph_break"]) - breaks_off
        assert all("conceptattention" not in reason and "diffusers" in reason for reason in new_breaks), new_breaks


class GuidedPipelineChecks:
    """For pipelines whose diffusers guider makes a conditional and an unconditional call per step: ``guided(pipe)``
    (set by the family's test class) is a context manager that turns guidance on."""

    guided: Any

    def test_pipeline_with_cfg(self, pipeline):
        """With guidance on (two calls per step) the output stays bit-identical and the maps sum to 1."""
        with self.guided(pipeline):
            reference = self.generate(pipeline, negative_prompt="blurry")
            with ConceptAttention(pipeline, ["house", "sea"]) as ca:
                output = self.generate(pipeline, negative_prompt="blurry")
        assert torch.equal(reference, output)
        torch.testing.assert_close(ca.maps.tensor.sum(0), torch.ones(self.expected_pipeline_grid))

    def test_guided_run_records_only_conditional_calls(self, pipeline):
        """The guider's ``pred_uncond`` call is not a step of the maps."""
        with self.guided(pipeline), ConceptAttention(pipeline, ["house", "sea"]) as ca:
            self.generate(pipeline, negative_prompt="blurry")
        assert ca.session.num_recorded_calls == self.pipeline_kwargs["num_inference_steps"]
