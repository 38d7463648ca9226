"""The adapter battery for the zoo adapters (docs/models.md): the shared battery, with the restoration check reading
every attention module's processor, since several of these transformers (Bria, Ovis-Image, CogView4) lack diffusers'
``AttentionMixin`` and its ``attn_processors``."""

from __future__ import annotations

from typing import Any

import pytest

from conceptattention import ConceptAttention, get_adapter

from .battery import AdapterBattery, _Boom


def attention_processors(transformer: Any) -> dict[str, Any]:
    """Every attention module's processor by module path."""
    return {name: module.processor for name, module in transformer.named_modules() if hasattr(module, "processor")}


class ZooBattery(AdapterBattery):
    """:class:`AdapterBattery` whose restoration check does not need ``attn_processors``; it also checks that no
    block pre-hook is left behind."""

    def test_restored_after_normal_exit_and_exception(self, transformer):
        before = attention_processors(transformer)
        with ConceptAttention(transformer, concept_embeds=self.embeds()):
            self.run(transformer, self.make_inputs())
        assert attention_processors(transformer) == before
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
        after = attention_processors(transformer)
        assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
        assert not any(handle for block in blocks for handle in block._forward_pre_hooks.values())
        assert not getattr(transformer, "_conceptattention_active", False)
