"""The shared adapter test battery: every architecture adapter's test class inherits these checks.

A subclass supplies a tiny random model (and optionally a tiny pipeline) and its inputs; the battery checks
bit-identical outputs, restoration after normal exit and exceptions, map shapes/finiteness/softmax sums,
determinism, layer and step selection, CFG handling, and agreement with a naive reference when one is given.

Subclass contract (class attributes / methods):
    concept_dim: width of concept embeddings (the text encoder output the model's text input layer takes)
    make_transformer() -> nn.Module                       (called once per class; cache it)
    make_inputs(batch_size: int, seed: int) -> dict      transformer kwargs
    expected_grid: (frames, h, w) of make_inputs' image tokens
    output_of(result) -> Tensor                          main output of a transformer call
    make_pipeline() -> pipeline | None                    (None: pipeline tests are skipped for this adapter)
    pipeline_kwargs: dict                                 kwargs of a short pipeline call (output_type="pt" or "latent")
    pipeline_cfg_kwargs: dict | None                      extra kwargs that turn classifier-free guidance on (batched or
                                                          as separate calls, e.g. Flux true CFG)
    pipeline_outputs(result) -> Tensor                    the pipeline's image/video tensor
    expected_pipeline_grid: (frames, h, w)
    naive_scores(transformer, inputs, embeds, layers, space, mode) -> [L, B, C, I] | None (optional)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conceptattention import ConceptAttention, get_adapter


class _Boom(Exception):
    pass


class AdapterBattery:
    concept_dim: int = 32
    expected_grid: tuple[int, int, int] = (1, 1, 1)
    pipeline_kwargs: dict[str, Any] = {}
    pipeline_cfg_kwargs: dict[str, Any] | None = None
    expected_pipeline_grid: tuple[int, int, int] = (1, 1, 1)
    spaces_checked: tuple[str, ...] = ("output", "cross_attention", "value")
    modes_checked: tuple[str, ...] = ("both", "cross", "self", "none")

    # ----- hooks for subclasses -----

    def make_transformer(self) -> Any:
        raise NotImplementedError

    def make_inputs(self, batch_size: int = 1, seed: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def output_of(self, result: Any) -> torch.Tensor:
        return result[0] if isinstance(result, tuple) else result.sample

    def make_pipeline(self) -> Any:
        return None

    def pipeline_outputs(self, result: Any) -> torch.Tensor:
        return result.images if hasattr(result, "images") else result.frames

    def naive_scores(self, transformer: Any, inputs: dict, embeds: torch.Tensor, layers: list[int], space: str, mode: str):
        return None

    # ----- helpers -----

    def embeds(self, count: int = 3, seed: int = 1) -> torch.Tensor:
        return torch.randn(count, self.concept_dim, generator=torch.Generator().manual_seed(seed))

    def run(self, transformer: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self.output_of(transformer(**inputs))

    def num_blocks(self, transformer: Any) -> int:
        return len(get_adapter(transformer).joint_blocks(transformer))

    @pytest.fixture
    def transformer(self):
        cls = type(self)
        if "_cached_transformer" not in cls.__dict__:  # built once per test class
            cls._cached_transformer = self.make_transformer()
        return cls._cached_transformer

    @pytest.fixture
    def pipeline(self):
        cls = type(self)
        if "_cached_pipeline" not in cls.__dict__:
            cls._cached_pipeline = self.make_pipeline()
        if cls._cached_pipeline is None:
            pytest.skip("this adapter's test class provides no pipeline")  # documented per adapter
        return cls._cached_pipeline

    def generate(self, pipe: Any, seed: int = 0, **extra: Any) -> torch.Tensor:
        kwargs = {**self.pipeline_kwargs, **extra}
        with torch.no_grad():
            return self.pipeline_outputs(pipe(prompt="a red house by the sea", generator=torch.Generator().manual_seed(seed), **kwargs))

    # ----- the battery -----

    def test_bare_transformer_bit_identical(self, transformer):
        inputs = self.make_inputs()
        reference = self.run(transformer, inputs)
        for space in self.spaces_checked:
            for mode in self.modes_checked:
                with ConceptAttention(transformer, concept_embeds=self.embeds(), space=space, concept_attention=mode):
                    output = self.run(transformer, inputs)
                assert torch.equal(reference, output), (space, mode)

    def test_maps_shape_finite_and_softmax(self, transformer):
        with ConceptAttention(transformer, concept_embeds=self.embeds()) as ca:
            self.run(transformer, self.make_inputs(batch_size=2))
        assert len(ca.batch_maps) == 2
        for maps in ca.batch_maps:
            assert maps.maps.shape == (3, *self.expected_grid)
            assert torch.isfinite(maps.maps).all() and torch.isfinite(maps.logits).all()
            torch.testing.assert_close(maps.maps.sum(0), torch.ones(self.expected_grid))

    def test_restored_after_normal_exit_and_exception(self, transformer):
        before = dict(transformer.attn_processors)
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
        assert all(transformer.attn_processors[name] is before[name] for name in before)
        blocks = get_adapter(transformer).joint_blocks(transformer)

        def explode(*args: Any, **kwargs: Any) -> None:
            raise _Boom()

        handle = blocks[-1].register_forward_pre_hook(explode)
        try:
            with pytest.raises(_Boom):
                with ConceptAttention(transformer, concept_embeds=self.embeds()):
                    self.run(transformer, self.make_inputs())
        finally:
            handle.remove()
        after = dict(transformer.attn_processors)
        assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
        assert not getattr(transformer, "_conceptattention_active", False)

    def test_deterministic(self, transformer):
        results = []
        for _ in range(2):
            with ConceptAttention(transformer, concept_embeds=self.embeds()) as ca:
                self.run(transformer, self.make_inputs())
            results.append(ca.maps.maps)
        assert torch.equal(results[0], results[1])

    def test_layer_selection_noncontiguous(self, transformer):
        count = self.num_blocks(transformer)
        layers = [0, count - 1] if count > 1 else [0]
        with ConceptAttention(transformer, concept_embeds=self.embeds(), layers=layers, keep_per_step=True) as ca:
            self.run(transformer, self.make_inputs())
        assert sorted(layer for _, layer in ca.per_step_scores) == layers
        single = []
        for layer in layers:
            with ConceptAttention(transformer, concept_embeds=self.embeds(), layers=[layer], softmax=False) as one:
                self.run(transformer, self.make_inputs())
            single.append(one.maps.logits)
        with ConceptAttention(transformer, concept_embeds=self.embeds(), layers=layers, softmax=False) as both:
            self.run(transformer, self.make_inputs())
        torch.testing.assert_close(both.maps.logits, torch.stack(single).mean(0))

    def test_matches_naive_reference(self, transformer):
        inputs = self.make_inputs(batch_size=2)
        embeds = self.embeds()
        count = self.num_blocks(transformer)
        layers = sorted({0, count - 1})
        checked = 0
        for space in self.spaces_checked:
            for mode in self.modes_checked:
                reference = self.naive_scores(transformer, inputs, embeds, layers, space, mode)
                if reference is None:
                    pytest.skip("no naive reference for this adapter")
                with ConceptAttention(
                    transformer, concept_embeds=embeds, layers=layers, space=space, concept_attention=mode, softmax=False
                ) as ca:
                    self.run(transformer, inputs)
                ours = torch.stack([maps.logits.flatten(1) for maps in ca.batch_maps])  # [B, C, I]
                expected = reference.mean(0).float()
                scale = expected.abs().max().item()
                torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * scale, msg=f"{space}/{mode}")
                checked += 1
        assert checked > 0

    def test_pipeline_bit_identical_and_maps(self, pipeline):
        reference = self.generate(pipeline)
        with ConceptAttention(pipeline, ["house", "sea", "red car"]) as ca:
            output = self.generate(pipeline)
        assert torch.equal(reference, output)
        assert ca.maps.maps.shape == (3, *self.expected_pipeline_grid)
        assert torch.isfinite(ca.maps.maps).all()

    def test_pipeline_with_cfg(self, pipeline):
        if self.pipeline_cfg_kwargs is None:
            pytest.skip("this pipeline has no classifier-free guidance batch")
        reference = self.generate(pipeline, **self.pipeline_cfg_kwargs)
        with ConceptAttention(pipeline, ["house", "sea"]) as ca:
            output = self.generate(pipeline, **self.pipeline_cfg_kwargs)
        assert torch.equal(reference, output)
        assert len(ca.batch_maps) == 1  # the conditional half only
        torch.testing.assert_close(ca.maps.maps.sum(0), torch.ones(self.expected_pipeline_grid))
