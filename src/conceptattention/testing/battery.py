"""The shared adapter test battery: every architecture adapter's test class inherits these checks.

(About 600 lines on purpose: one class of checks every family runs; the zoo and FLUX-clone variants live in
:mod:`~conceptattention.testing.zoo_battery` and :mod:`~conceptattention.testing.flux_like_battery`.)

A subclass supplies a tiny random model (and optionally a tiny pipeline) and its inputs; the battery checks
bit-identical outputs, restoration after normal exit and exceptions, map shapes/finiteness/softmax sums,
determinism, layer and step selection, CFG handling, and agreement with a naive reference when one is given.
Each check is its own test: the bit-identity and naive-reference checks are parametrised over every
(``space``, ``mode``) pair of ``spaces_checked`` × ``modes_checked`` (12 tests each by default), and every test gets
a freshly built transformer / pipeline (function-scoped fixtures), so a test that changes its model cannot affect
another.

This module is a test helper: importing it needs pytest (the library itself never imports it).

Writing an adapter (say ``adapters/myfamily.py``): put tiny builders in ``conceptattention/testing/myfamily.py``
(``tiny_myfamily_transformer(num_layers=3, seed=0)``, ``tiny_myfamily_inputs(batch_size=1, seed=0)``,
optionally ``tiny_myfamily_pipeline``), a naive float64 reference in ``testing/references/myfamily.py`` (built from
:mod:`conceptattention.testing.references.common`), and in ``tests/adapters/test_myfamily.py``::

    from conceptattention.testing.battery import AdapterBattery

    class TestMyFamilyBattery(AdapterBattery):
        concept_dim = 32                      # width of the text input of the transformer
        expected_grid = (1, 4, 6)             # (frames, h, w) of tiny_inputs' image tokens
        tiny_transformer = tiny_myfamily_transformer
        tiny_inputs = tiny_myfamily_inputs
        tiny_pipeline = tiny_myfamily_pipeline  # optional: pipeline checks
        pipeline_kwargs = dict(height=32, width=48, num_inference_steps=2, output_type="pt")
        expected_pipeline_grid = (1, 16, 24)
        naive_reference = naive_myfamily_scores  # optional: the 12 (space, mode) reference checks

``pytest tests/adapters/test_myfamily.py`` then runs the whole battery. Models without diffusers' ``AttentionMixin``
use :class:`~conceptattention.testing.zoo_battery.ZooBattery`; FLUX.1 clones without pooled text
:class:`~conceptattention.testing.flux_like_battery.FluxLikeBattery`.

Subclass contract (class attributes / methods):
    concept_dim: width of concept embeddings (the text encoder output the model's text input layer takes)
    tiny_transformer, tiny_inputs, tiny_pipeline, naive_reference: the family's factories (plain functions set as
        class attributes); the default make_transformer / make_inputs / make_pipeline / naive_scores call them, the
        model and pipeline factories with ``tiny_kwargs`` (default ``num_layers=3``). A subclass may instead override
        those methods.
    make_transformer() -> nn.Module                       (called for every test: a fresh model each time)
    make_inputs(batch_size: int, seed: int) -> dict      transformer kwargs
    expected_grid: (frames, h, w) of make_inputs' image tokens
    output_of(result) -> Tensor                          main output of a transformer call
    make_pipeline() -> pipeline | None                    (None: pipeline tests are skipped for this adapter)
    pipeline_kwargs: dict                                 kwargs of a short pipeline call (output_type="pt" or "latent")
    pipeline_cfg_kwargs: dict | None                      extra kwargs that turn classifier-free guidance on (batched or
                                                          as separate calls, e.g. Flux true CFG)
    pipeline_outputs(result) -> Tensor                    the pipeline's image/video tensor
    expected_pipeline_grid: (frames, h, w)
    spaces_checked, modes_checked: the (space, mode) pairs of the parametrised checks
    naive_scores(transformer, inputs, embeds, layers, space, mode) -> [L, B, C, I] | None (optional)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from conceptattention import ConceptAttention, UnsupportedSetupError, explain, get_adapter


class _Boom(Exception):
    pass


# ----- helpers shared by the per-family test files -----


def seeded_embeds(count: int = 3, dim: int = 32, seed: int = 1) -> torch.Tensor:
    """``count`` random concept embeddings of width ``dim`` from a seeded generator."""
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def make_generate(
    defaults: dict[str, Any], *, output: str = "images", prompt: str = "a red house by the sea"
) -> Callable[..., torch.Tensor]:
    """A module's ``generate(pipe, prompt=..., seed=0, **overrides)``: a seeded pipeline call with the module's
    default kwargs, returning the result's ``output`` attribute (``images`` or ``frames``)."""

    def generate(pipe: Any, prompt: str = prompt, seed: int = 0, **kwargs: Any) -> torch.Tensor:
        merged = {**defaults, **kwargs}
        return getattr(pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **merged), output)

    return generate


def module_fixtures(battery: type[AdapterBattery]) -> tuple[Any, Any]:
    """Module-scoped ``transformer`` and ``pipe`` fixtures for a family file's plain test functions, built like the
    battery class's (module-scoped: shared by the module's plain test functions, never by the battery's tests)."""

    @pytest.fixture(scope="module", name="transformer")
    def transformer_fixture() -> Any:
        return battery().make_transformer()

    @pytest.fixture(scope="module", name="pipe")
    def pipe_fixture() -> Any:
        return battery().make_pipeline()

    return transformer_fixture, pipe_fixture


def random_image(height: int = 40, width: int = 56, seed: int = 0) -> Any:
    """A seeded random RGB PIL image."""
    from PIL import Image

    pixels = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(seed)) * 255
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def batch_logits(ca: ConceptAttention) -> torch.Tensor:
    """The raw scores of every batch item of a finished run, flattened: [B, C, I]."""
    return torch.stack([maps.logits.flatten(1) for maps in ca.batch_maps])


def layer_logits(transformer: Any, inputs: dict[str, Any], embeds: torch.Tensor, layers: list[int], **options: Any):
    """Raw (``softmax=False``) scores of one single-item transformer call at ``layers``, flattened: [C, I]."""
    with ConceptAttention(transformer, concept_embeds=embeds, layers=layers, softmax=False, **options) as ca:
        transformer(**inputs)
    return ca.maps.logits.flatten(1)


def assert_close_scaled(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """``assert_close`` with rtol 1e-4 and an absolute tolerance of 1e-4 of the expected values' largest magnitude."""
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def assert_right_not_wrong(ours: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> None:
    """``ours`` matches the right reference and is 100x further from a deliberately wrong variant of it (so the
    test is sensitive to the detail the wrong variant gets wrong)."""
    assert_close_scaled(ours, right)
    assert (ours - wrong).abs().max() > 100 * (ours - right).abs().max()


def assert_reference_not_variant(
    transformer: Any,
    inputs: dict[str, Any],
    embeds: torch.Tensor,
    layers: list[int],
    reference: Callable[..., torch.Tensor],
    *,
    wrong: dict[str, Any],
    right: dict[str, Any] | None = None,
    **options: Any,
) -> torch.Tensor:
    """The raw scores of one call at ``layers`` (``options``: further :class:`ConceptAttention` options) match the
    naive ``reference`` called with the ``right`` keywords, and not its deliberately wrong variant called with the
    ``wrong`` keywords (:func:`assert_right_not_wrong`). Returns our scores [C, I]."""
    ours = layer_logits(transformer, inputs, embeds, layers, **options)  # [C, I]
    expected = reference(transformer, inputs, embeds, layers, **(right or {}))[0, 0].float()  # [C, I]
    variant = reference(transformer, inputs, embeds, layers, **wrong)[0, 0].float()  # [C, I]
    assert_right_not_wrong(ours, expected, variant)
    return ours


def assert_concepts_permute(
    transformer: Any, inputs: dict[str, Any], embeds: torch.Tensor, layers: list[int], ours: torch.Tensor, order: list[int]
) -> None:
    """All concepts share one position: permuting the concepts permutes their scores ``ours`` ([C, I])."""
    permuted = layer_logits(transformer, inputs, embeds[order], layers)
    torch.testing.assert_close(permuted, ours[order], rtol=1e-5, atol=1e-5)


def assert_padding_mask_kept(transformer: Any, masked: dict[str, Any], unmasked: dict[str, Any], dim: int) -> None:
    """The prompt's padding mask matters for the output (so the check is sensitive), and with concept attention on
    the masked call's output stays bit-identical."""
    with torch.no_grad():
        assert not torch.equal(transformer(**masked)[0], transformer(**unmasked)[0])
        reference = transformer(**masked)[0]
    with ConceptAttention(transformer, concept_embeds=torch.randn(2, dim)):
        assert torch.equal(transformer(**masked)[0], reference)


def assert_subclassed_processor_refused(model: Any, attn: Any, stock_processor: type, dim: int) -> None:
    """A user's subclass of the stock processor (it may change the attention) set on ``attn`` is refused by name."""

    class CustomProcessor(stock_processor):
        pass

    attn.set_processor(CustomProcessor())
    with pytest.raises(UnsupportedSetupError, match="CustomProcessor"):
        ConceptAttention(model, concept_embeds=torch.randn(2, dim)).__enter__()


def assert_cfg_conditional_half(pipe: Any, generate_cfg: Callable[[Any], Any], **tolerance: Any) -> None:
    """Under a batched classifier-free guidance call the default maps are the conditional (second) half's."""
    with ConceptAttention(pipe, ["house", "sea"], batch_half="all") as both:
        generate_cfg(pipe)
    with ConceptAttention(pipe, ["house", "sea"]) as conditional:
        generate_cfg(pipe)
    assert len(both.batch_maps) == 2 and len(conditional.batch_maps) == 1
    torch.testing.assert_close(conditional.maps.tensor, both.batch_maps[1].tensor, **tolerance)
    assert not torch.allclose(both.batch_maps[0].tensor, both.batch_maps[1].tensor)


def t5_content_states(tokenizer: Any, encoder: Any, concepts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A T5-style encoder's states of the padded concepts [C, L, D] and the mask of their content tokens [C, L]
    (attended and not the end token)."""
    tokens = tokenizer(concepts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    content = tokens.attention_mask.bool() & (tokens.input_ids != tokenizer.eos_token_id)
    return hidden, content


def assert_t5_concept_means(encoded: torch.Tensor, tokenizer: Any, encoder: Any, concepts: list[str]) -> None:
    """Each concept's embedding ``encoded[c]`` ([C, D]) is the mean of the T5-style ``encoder``'s states of its content
    tokens (:func:`t5_content_states`): masked padding and the end token left out, multi-word concepts not truncated."""
    hidden, content = t5_content_states(tokenizer, encoder, concepts)  # [C, L, D], [C, L]
    for index in range(len(concepts)):
        torch.testing.assert_close(encoded[index], hidden[index, content[index]].mean(0))


def assert_t5_poolings(encoded: dict[str, torch.Tensor], hidden: torch.Tensor, content: torch.Tensor) -> None:
    """``encoded[pooling]`` ("mean", "first", "last") pools each concept's content tokens, and a multi-word concept
    is not truncated to its first token."""
    for index in range(len(hidden)):
        positions = content[index].nonzero().flatten()
        torch.testing.assert_close(encoded["mean"][index], hidden[index, positions].mean(0))
        torch.testing.assert_close(encoded["first"][index], hidden[index, positions[0]])
        torch.testing.assert_close(encoded["last"][index], hidden[index, positions[-1]])
    assert not torch.allclose(encoded["mean"][0], encoded["first"][0])


def assert_mean_of_concept_span(
    encoded_row: torch.Tensor, hidden: torch.Tensor, ids: torch.Tensor, tokenizer: Any, concept: str, start: int,
    **tolerance: Any,
) -> None:
    """The concept's tokens sit at ``start`` of the templated ``ids`` [1, L] and its embedding is the mean of their
    states ``hidden`` [L, D]."""
    content = slice(start, start + len(tokenizer(concept).input_ids))
    assert tokenizer.decode(ids[0, content]) == concept
    torch.testing.assert_close(encoded_row, hidden[content].mean(0), **tolerance)


def check_explain(
    pipe: Any,
    *,
    height: int,
    width: int,
    grid: tuple[int, int, int],
    skipped_block: Any,
    layers: list[int],
    bad_height: int | None = None,
    bad_match: str = "multiples",
    one_caption: str = "a house",
) -> None:
    """``explain`` on a random image: map shape and softmax sums with 2 samples, a different result with 1 sample,
    a refused size (when ``bad_height`` is given), and early exit: ``skipped_block`` never runs when the last
    selected block of ``layers`` comes before it."""
    image = random_image()
    concepts = ["house", "sky"]
    two = explain(pipe, image, concepts, height=height, width=width, num_samples=2, caption="a house")
    assert two.tensor.shape == (2, *grid)
    torch.testing.assert_close(two.tensor.sum(0), torch.ones(grid))
    one = explain(pipe, image, concepts, height=height, width=width, num_samples=1, caption=one_caption)
    assert not torch.allclose(one.tensor, two.tensor)
    if bad_height is not None:
        with pytest.raises(ValueError, match=bad_match):
            explain(pipe, image, concepts, height=bad_height, width=width)
    calls = []
    handle = skipped_block.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        explain(pipe, image, concepts, height=height, width=width, layers=layers)
    finally:
        handle.remove()
    assert calls == []  # early exit after the last selected block


def explain_transformer_calls(pipe: Any, *, height: int, width: int, **options: Any) -> list[dict[str, Any]]:
    """The keyword arguments (tensors cloned) of every transformer call of one ``explain`` of a blank
    ``width``×``height`` image with the concepts "house" and "sky" (``options``: further ``explain`` keywords)."""
    from PIL import Image

    calls: list[dict[str, Any]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append({name: value.clone() if torch.is_tensor(value) else value for name, value in kwargs.items()})

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        explain(pipe, Image.new("RGB", (width, height)), ["house", "sky"], height=height, width=width, **options)
    finally:
        handle.remove()
    return calls


def assert_bit_identical_in_every_space(
    transformer: Any, inputs: dict[str, Any], dim: int, output: Callable[[Any], torch.Tensor] = lambda result: result[0]
) -> None:
    """With concept attention on in each space, the transformer's ``output`` of ``inputs`` stays bit-identical."""
    with torch.no_grad():
        reference = output(transformer(**inputs))
        for space in ("output", "cross_attention", "value"):
            with ConceptAttention(transformer, concept_embeds=seeded_embeds(3, dim), space=space):
                assert torch.equal(output(transformer(**inputs)), reference), space


@contextmanager
def fresh_dynamo() -> Iterator[Any]:
    """Dynamo reset before and after the block, its ``counters`` (graphs, graph breaks) cleared and yielded."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    try:
        yield counters
    finally:
        torch._dynamo.reset()


def per_space_and_mode(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a battery test that takes ``space`` and ``mode``: the battery runs it once per checked pair."""
    test.per_space_and_mode = True  # type: ignore[attr-defined]
    return test


class AdapterBattery:
    concept_dim: int = 32
    expected_grid: tuple[int, int, int] = (1, 1, 1)
    pipeline_kwargs: dict[str, Any] = {}
    pipeline_cfg_kwargs: dict[str, Any] | None = None
    expected_pipeline_grid: tuple[int, int, int] = (1, 1, 1)
    spaces_checked: tuple[str, ...] = ("output", "cross_attention", "value")
    modes_checked: tuple[str, ...] = ("both", "cross", "self", "none")
    tiny_transformer: Callable[..., Any] | None = None
    tiny_inputs: Callable[..., dict[str, Any]] | None = None
    tiny_pipeline: Callable[..., Any] | None = None
    naive_reference: Callable[..., torch.Tensor] | None = None
    tiny_kwargs: dict[str, Any] = {"num_layers": 3}
    #: graphs the concept blocks add under compile_repeated_blocks (the first joint block, every other one; a third
    #: where single blocks are selected too)
    concept_graphs: int = 2

    # ----- hooks for subclasses -----

    def factory(self, name: str) -> Callable[..., Any] | None:
        """A factory class attribute as the plain function (read from the class: never bound to the instance)."""
        return getattr(type(self), name)

    def make_transformer(self) -> Any:
        build = self.factory("tiny_transformer")
        if build is None:
            raise NotImplementedError
        return build(**self.tiny_kwargs)

    def make_inputs(self, batch_size: int = 1, seed: int = 0) -> dict[str, Any]:
        build = self.factory("tiny_inputs")
        if build is None:
            raise NotImplementedError
        return build(batch_size=batch_size, seed=seed)

    def output_of(self, result: Any) -> torch.Tensor:
        return result[0] if isinstance(result, tuple) else result.sample

    def make_pipeline(self) -> Any:
        build = self.factory("tiny_pipeline")
        return None if build is None else build(**self.tiny_kwargs)

    def pipeline_outputs(self, result: Any) -> torch.Tensor:
        return result.images if hasattr(result, "images") else result.frames

    def naive_scores(self, transformer: Any, inputs: dict, embeds: torch.Tensor, layers: list[int], space: str, mode: str):
        reference = self.factory("naive_reference")
        if reference is None:
            return None
        return reference(transformer, inputs, embeds, layers, space=space, mode=mode)

    # ----- helpers -----

    def embeds(self, count: int = 3, seed: int = 1) -> torch.Tensor:
        return seeded_embeds(count, self.concept_dim, seed)

    def run(self, transformer: Any, inputs: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return self.output_of(transformer(**inputs))

    def processors(self, transformer: Any) -> dict[str, Any]:
        """Every attention processor by module path (diffusers' ``attn_processors``)."""
        return dict(transformer.attn_processors)

    def num_blocks(self, transformer: Any) -> int:
        return len(get_adapter(transformer).joint_blocks(transformer))

    @pytest.fixture
    def transformer(self) -> Any:
        """A freshly built transformer for every test: nothing a test does to it reaches another test."""
        return self.make_transformer()

    @pytest.fixture
    def pipeline(self) -> Any:
        """A freshly built pipeline for every test (skipped where the class provides none)."""
        pipe = self.make_pipeline()
        if pipe is None:
            pytest.skip("this adapter's test class provides no pipeline")  # documented per adapter
        return pipe

    def has_naive_reference(self) -> bool:
        """Whether the class gives a naive reference (a ``naive_reference`` factory or its own ``naive_scores``)."""
        return self.factory("naive_reference") is not None or type(self).naive_scores is not AdapterBattery.naive_scores

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """One test per (space, mode) of ``spaces_checked`` × ``modes_checked`` for the checks marked
        :func:`per_space_and_mode` (none for the reference check of a class without a reference: one skipped test)."""
        if not getattr(metafunc.function, "per_space_and_mode", False):
            return
        pairs = [(space, mode) for space in self.spaces_checked for mode in self.modes_checked]
        if metafunc.function.__name__ == "test_matches_naive_reference" and not self.has_naive_reference():
            pairs = []  # pytest reports the empty parameter set as one skipped test
        metafunc.parametrize(("space", "mode"), pairs, ids=[f"{space}-{mode}" for space, mode in pairs])

    def generate(self, pipe: Any, seed: int = 0, **extra: Any) -> torch.Tensor:
        kwargs = {**self.pipeline_kwargs, **extra}
        with torch.no_grad():
            return self.pipeline_outputs(pipe(prompt="a red house by the sea", generator=torch.Generator().manual_seed(seed), **kwargs))

    # ----- the battery -----

    @per_space_and_mode
    def test_bare_transformer_bit_identical(self, transformer, space, mode):
        inputs = self.make_inputs()
        reference = self.run(transformer, inputs)
        with ConceptAttention(transformer, concept_embeds=self.embeds(), space=space, concept_attention=mode):
            output = self.run(transformer, inputs)
        assert torch.equal(reference, output)

    def test_maps_shape_finite_and_softmax(self, transformer):
        with ConceptAttention(transformer, concept_embeds=self.embeds()) as ca:
            self.run(transformer, self.make_inputs(batch_size=2))
        assert len(ca.batch_maps) == 2
        for maps in ca.batch_maps:
            assert maps.tensor.shape == (3, *self.expected_grid)
            assert torch.isfinite(maps.tensor).all() and torch.isfinite(maps.logits).all()
            torch.testing.assert_close(maps.tensor.sum(0), torch.ones(self.expected_grid))

    def test_restored_after_normal_exit_and_exception(self, transformer):
        before = self.processors(transformer)
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
        after = self.processors(transformer)
        assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
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
        after = self.processors(transformer)
        assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
        assert not any(handle for block in blocks for handle in block._forward_pre_hooks.values())
        assert not getattr(transformer, "_conceptattention_active", False)

    def test_deterministic(self, transformer):
        results = []
        for _ in range(2):
            with ConceptAttention(transformer, concept_embeds=self.embeds()) as ca:
                self.run(transformer, self.make_inputs())
            results.append(ca.maps.tensor)
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

    @per_space_and_mode
    def test_matches_naive_reference(self, transformer, space, mode):
        inputs = self.make_inputs(batch_size=2)
        embeds = self.embeds()
        count = self.num_blocks(transformer)
        layers = sorted({0, count - 1})
        reference = self.naive_scores(transformer, inputs, embeds, layers, space, mode)
        if reference is None:
            pytest.skip(f"no naive reference for {space}/{mode} on this adapter")
        with ConceptAttention(
            transformer, concept_embeds=embeds, layers=layers, space=space, concept_attention=mode, softmax=False
        ) as ca:
            self.run(transformer, inputs)
        ours = torch.stack([maps.logits.flatten(1) for maps in ca.batch_maps])  # [B, C, I]
        expected = reference.mean(0).float()
        scale = expected.abs().max().item()
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * scale)

    # ----- fused projections -----

    #: The fused processor computes something else than the unfused one (diffusers' FusedJointAttnProcessor2_0 drops
    #: SD3.5's QK-norm), so fused maps are only compared with themselves.
    fused_changes_model = False

    def test_fused_qkv_projections(self):
        """``transformer.fuse_qkv_projections()`` (as ``pipe.fuse_qkv_projections()`` does) is supported: outputs
        stay bit-identical to the fused model's, and the maps match the unfused ones (same weights)."""
        model = self.make_transformer()  # a fresh one: fusing changes the module
        inputs = self.make_inputs()
        with ConceptAttention(model, concept_embeds=self.embeds()) as unfused:
            self.run(model, inputs)
        model.fuse_qkv_projections()
        reference = self.run(model, inputs)
        with ConceptAttention(model, concept_embeds=self.embeds()) as fused:
            output = self.run(model, inputs)
        assert torch.equal(reference, output)
        assert torch.isfinite(fused.maps.tensor).all()
        if not self.fused_changes_model:
            torch.testing.assert_close(fused.maps.tensor, unfused.maps.tensor, rtol=1e-4, atol=1e-5)

    # ----- torch.compile -----

    def make_compile_transformer(self) -> Any:
        """A fresh model for the regional-compile test (may differ from make_transformer: e.g. more blocks than graphs)."""
        return self.make_transformer()

    def test_compiled_whole_model(self):
        """``torch.compile(transformer)`` is accepted (its ``_orig_mod`` is used): outputs with maps are equal to
        the compiled outputs without, the maps match the eager ones, and a second block reuses the graph."""
        inputs = self.make_inputs()
        model = self.make_transformer()  # a fresh one: compiling changes the module
        with ConceptAttention(model, concept_embeds=self.embeds()) as eager:
            self.run(model, inputs)
        with fresh_dynamo() as counters:
            compiled = torch.compile(model, backend="aot_eager")
            plain = self.run(compiled, inputs)
            graphs_off, breaks_off = counters["stats"]["unique_graphs"], set(counters["graph_break"])
            graphs_on = []
            for _ in range(2):
                with ConceptAttention(compiled, concept_embeds=self.embeds()) as ca:
                    output = self.run(compiled, inputs)
                assert torch.equal(plain, output)
                torch.testing.assert_close(ca.maps.tensor, eager.maps.tensor)
                graphs_on.append(counters["stats"]["unique_graphs"])
            assert torch.equal(self.run(compiled, inputs), plain)  # restored: the maps-off graphs again
            self.check_compiled_graphs(counters, graphs_off, breaks_off, graphs_on)

    def check_compiled_graphs(self, counters: Any, graphs_off: int, breaks_off: set, graphs_on: list[int]) -> None:
        """Dynamo's ``counters`` after the whole-model compile test: one maps-off and one maps-on graph, no graph
        break. ``graphs_off``/``breaks_off``: the graphs and break reasons of the maps-off call, ``graphs_on``: the
        graph count after each of the two maps-on ``with`` blocks."""
        assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # maps off, maps on
        assert not counters["graph_break"], dict(counters["graph_break"])

    def test_regional_compile_one_graph_per_block_class(self):
        """``compile_repeated_blocks()``: no per-block recompilation (the layer index is never traced), so a
        generation uses the same few graphs whatever the number of blocks, with maps equal to the eager ones."""
        model = self.make_compile_transformer()
        if not getattr(model, "_repeated_blocks", None):
            pytest.skip(f"diffusers offers no compile_repeated_blocks for {type(model).__name__}")
        inputs = self.make_inputs()
        with ConceptAttention(model, concept_embeds=self.embeds()) as eager:
            self.run(model, inputs)
        with fresh_dynamo() as counters:
            model.compile_repeated_blocks(backend="aot_eager")
            plain = self.run(model, inputs)
            graphs_off = counters["stats"]["unique_graphs"]
            with ConceptAttention(model, concept_embeds=self.embeds()) as ca:
                output = self.run(model, inputs)
                graphs_first_call = counters["stats"]["unique_graphs"]
                self.run(model, inputs)  # a second step
            assert torch.equal(plain, output)
            torch.testing.assert_close(ca.maps.tensor, eager.maps.tensor)
            # the concept blocks add at most two graphs (the first joint block, which embeds the concepts, and
            # every other one), never one per block; later steps and later blocks reuse them
            assert graphs_first_call - graphs_off <= self.concept_graphs, dict(counters["stats"])
            with ConceptAttention(model, concept_embeds=self.embeds()) as again:
                self.run(model, inputs)
            torch.testing.assert_close(again.maps.tensor, eager.maps.tensor)
            assert counters["stats"]["unique_graphs"] == graphs_first_call, dict(counters["stats"])
            assert not counters["graph_break"], dict(counters["graph_break"])

    def test_pipeline_bit_identical_and_maps(self, pipeline):
        reference = self.generate(pipeline)
        with ConceptAttention(pipeline, ["house", "sea", "red car"]) as ca:
            output = self.generate(pipeline)
        assert torch.equal(reference, output)
        assert ca.maps.tensor.shape == (3, *self.expected_pipeline_grid)
        assert torch.isfinite(ca.maps.tensor).all()

    def test_pipeline_with_cfg(self, pipeline):
        if self.pipeline_cfg_kwargs is None:
            pytest.skip("this pipeline has no classifier-free guidance batch")
        reference = self.generate(pipeline, **self.pipeline_cfg_kwargs)
        with ConceptAttention(pipeline, ["house", "sea"]) as ca:
            output = self.generate(pipeline, **self.pipeline_cfg_kwargs)
        assert torch.equal(reference, output)
        assert len(ca.batch_maps) == 1  # the conditional half only
        torch.testing.assert_close(ca.maps.tensor.sum(0), torch.ones(self.expected_pipeline_grid))
