"""Model-free reference methods for ShapesWorld: the colour prior, the layout prior and all-background.

They answer "how much of a score needs no model at all?". None of them reads the caption; none is fitted to scenes.

* **colour prior** (:func:`colour_prior_maps`): each concept word has a set of typical RGB values taken from the
  ShapesWorld renderer's palette for the data version (:func:`conceptattention.shapesworld.render.typical_colours`:
  a colour word's own colour, every colour an object's main part may take plus its fixed parts, the sky gradients,
  the ground tints). A pixel's score for a concept is minus its distance to the nearest of them, so the argmax
  gives each pixel to the concept whose typical RGB is nearest. Exact ties (two objects that share a colour) go to
  the concept that comes first in the vocabulary, never to the one listed first, so the concept list's order (the
  present objects first) gives no information away.
* **layout prior** (:func:`layout_prior_maps`): ``sky`` scores ``1 - (row + 0.5) / H`` and every ground word
  (``grass``, ``sea``, ``sand``) scores ``(row + 0.5) / H``; objects and colours score 0. The argmax gives the top
  half to the sky and the bottom half to the ground; objects get nothing.
* **all-background** (:func:`all_background_maps`): every map is 0. Under the mean threshold it predicts no
  foreground (the trivial fg/bg reference, AP 0.5); under the argmax every pixel is a tie and gets no concept.

Example:
    >>> import torch
    >>> image = torch.tensor([0.86, 0.13, 0.13]).view(3, 1, 1).expand(3, 2, 2)  # a red 2 x 2 image
    >>> colour_prior_maps(image, ["blue", "red"]).argmax(0).tolist()
    [[1, 1], [1, 1]]
    >>> layout_prior_maps(4, 1, ["sun", "sky", "sea"]).argmax(0)[:, 0].tolist()
    [1, 1, 2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from ..errors import ConceptAttentionError


__all__ = ["BASELINES", "BaselineError", "all_background_maps", "baseline_maps", "colour_prior_maps",
           "layout_prior_maps"]  # fmt: skip

BASELINES: tuple[str, ...] = ("colour-prior", "layout-prior", "all-background")
"""Names of the model-free reference methods."""

_TIE_BREAK = 1e-6
"""Distance added per vocabulary position so that exact ties go to the concept first in the vocabulary."""


class BaselineError(ConceptAttentionError, ValueError):
    """A baseline got an unknown concept word, a bad image or an unknown name."""


@lru_cache(maxsize=4)
def _prototypes(version: str) -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    from conceptattention.shapesworld.render import SceneError, typical_colours

    try:
        table = typical_colours(version)
    except SceneError as error:
        raise BaselineError(str(error)) from error
    return tuple(table), {word: torch.tensor(values, dtype=torch.float64) for word, values in table.items()}


def _check_concepts(concepts: Sequence[str], vocabulary: Sequence[str]) -> None:
    if len(concepts) == 0:
        raise BaselineError("A baseline needs at least one concept.")
    unknown = [concept for concept in concepts if concept not in vocabulary]
    if unknown:
        raise BaselineError(
            f"The ShapesWorld baselines only know ShapesWorld concept words; {unknown} are not among "
            f"{', '.join(vocabulary)}."
        )


def colour_prior_maps(image: torch.Tensor, concepts: Sequence[str], version: str = "v1") -> torch.Tensor:
    """Colour-prior maps: minus the RGB distance of every pixel to each concept's nearest typical colour.

    Args:
        image: Float ``[3, H, W]`` RGB in [0, 1].
        concepts: ShapesWorld concept words.
        version: ShapesWorld data version whose palette defines the typical colours.

    Returns:
        Float32 ``[C, H, W]`` scores (higher = nearer).

    Raises:
        BaselineError: For a word outside the ShapesWorld vocabulary, an unknown version or a bad image.

    Example:
        >>> import torch
        >>> sky = torch.tensor([0.40, 0.64, 0.92]).view(3, 1, 1).expand(3, 1, 1)
        >>> colour_prior_maps(sky, ["sand", "sky"]).argmax(0).item()
        1
    """
    vocabulary, prototypes = _prototypes(version)
    _check_concepts(concepts, vocabulary)
    if image.ndim != 3 or image.shape[0] != 3:
        raise BaselineError(f"The colour prior needs an RGB image [3, H, W], got shape {list(image.shape)}.")
    pixels = image.double().reshape(3, -1).T  # [H * W, 3]
    rows = []
    for concept in concepts:
        distance = torch.cdist(pixels, prototypes[concept]).min(dim=1).values  # [H * W]
        rows.append(-(distance + _TIE_BREAK * vocabulary.index(concept)))
    return torch.stack(rows).reshape(len(concepts), *image.shape[1:]).float()  # [C, H * W] -> [C, H, W]


def layout_prior_maps(height: int, width: int, concepts: Sequence[str]) -> torch.Tensor:
    """Layout-prior maps: the sky gets the top rows, the ground words the bottom rows, everything else 0.

    Args:
        height: Rows of the label map.
        width: Columns of the label map.
        concepts: ShapesWorld concept words.

    Returns:
        Float32 ``[C, H, W]``.

    Raises:
        BaselineError: For a word outside the ShapesWorld vocabulary or a non-positive size.

    Example:
        >>> layout_prior_maps(2, 2, ["sky", "car"])[:, :, 0].tolist()
        [[0.75, 0.25], [0.0, 0.0]]
    """
    from conceptattention.shapesworld.render import GROUNDS

    vocabulary, _ = _prototypes("v1")
    _check_concepts(concepts, vocabulary)
    if height < 1 or width < 1:
        raise BaselineError(f"The layout prior needs a positive size, got {height} x {width}.")
    depth = (torch.arange(height, dtype=torch.float32) + 0.5) / height  # [H]: 0 at the top, 1 at the bottom
    maps = torch.zeros(len(concepts), height, width)
    for position, concept in enumerate(concepts):
        if concept == "sky":
            maps[position] = (1.0 - depth)[:, None]  # [H, 1] broadcast over columns
        elif concept in GROUNDS:
            maps[position] = depth[:, None]
    return maps


def all_background_maps(height: int, width: int, concepts: Sequence[str]) -> torch.Tensor:
    """All-zero maps ``[C, H, W]``: no concept is anywhere (the trivial reference).

    Example:
        >>> all_background_maps(2, 3, ["sun"]).shape
        torch.Size([1, 2, 3])
    """
    if len(concepts) == 0 or height < 1 or width < 1:
        raise BaselineError(
            f"all-background needs concepts and a positive size, got {len(concepts)}, {height}x{width}."
        )
    return torch.zeros(len(concepts), height, width)


def baseline_maps(name: str, image: torch.Tensor, concepts: Sequence[str], version: str = "v1") -> torch.Tensor:
    """Maps ``[C, H, W]`` of the baseline ``name`` (one of :data:`BASELINES`) for an ``[3, H, W]`` image.

    Example:
        >>> import torch
        >>> baseline_maps("layout-prior", torch.zeros(3, 4, 4), ["sky", "grass"]).shape
        torch.Size([2, 4, 4])
    """
    if name == "colour-prior":
        return colour_prior_maps(image, concepts, version)
    if name == "layout-prior":
        return layout_prior_maps(image.shape[-2], image.shape[-1], concepts)
    if name == "all-background":
        return all_background_maps(image.shape[-2], image.shape[-1], concepts)
    raise BaselineError(f"Unknown baseline {name!r}; choose one of {', '.join(BASELINES)}.")
