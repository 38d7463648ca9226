"""Naive float64 references of ConceptAttention, one module per family (named as its adapter), for tests.

Each ``references/<family>.py`` offers ``naive_<family>_scores(transformer, inputs, concept_embeds, layers,
space=..., mode=...) -> [L, B, C, I]``: it re-runs the family's joint-attention blocks by hand, in float64, with ONE
full attention over ``[..., concepts]`` and an explicit boolean mask, sharing no code with the library's processors
(:mod:`.common` holds the naive building blocks they share). Agreement with the optimised path is evidence that the
adapter implements the method; set a reference as the ``naive_reference`` of an adapter's battery class
(:mod:`conceptattention.testing.battery`) to run the 12 (space, mode) comparisons.

Example:
    >>> from conceptattention.testing.references.common import Layout
    >>> Layout.text_first(num_text=2, num_image=3, num_concepts=1).concepts
    slice(5, 6, None)
"""
