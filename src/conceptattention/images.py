"""Image loading and conversion between PIL images and diffusers-style tensors.

:func:`load_image` turns whatever image file a user points at into an 8-bit RGB :class:`PIL.Image.Image`, with clear
errors for files that are missing, unreadable or dangerously large. :func:`image_to_tensor` and
:func:`tensor_to_image` convert between PIL images and ``[3, H, W]`` float tensors in the ``[-1, 1]`` range that VAEs
of diffusers pipelines expect.

Conversions done by :func:`to_rgb` (and hence :func:`load_image`):

* grayscale (``L``) and bilevel (``1``) images are replicated to three channels;
* images with transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour, premultiplied
  ``RGBa``/``La``) are alpha-composited over a **white** background, the usual convention for documents and the
  background that diffusion models see most often in product shots;
* 16-bit grayscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled from ``[0, 65535]`` to ``[0, 255]``
  (``round(v * 255 / 65535)``), not clipped; 32-bit integer images (``I``) are scaled the same way when their values
  lie in ``[0, 65535]`` (16-bit PNGs and TIFFs can open in this mode) and min-max rescaled to ``[0, 255]`` otherwise;
  32-bit float images (``F``) are scaled by 255 when their values lie in ``[0, 1]`` and min-max rescaled otherwise;
* ``CMYK``, ``YCbCr``, ``RGBX`` and palette images are converted with PIL.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConceptAttentionError


__all__ = [
    "ImageError",
    "ImageLoadError",
    "ImageNotFoundError",
    "image_to_tensor",
    "load_image",
    "tensor_to_image",
    "to_rgb",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(ConceptAttentionError, ValueError):
    """An image or image tensor that cannot be used (wrong type or shape, NaN values, a mode without RGB)."""


class ImageLoadError(ImageError):
    """An image file could not be loaded (unreadable, corrupt, not an image, too large, unsupported)."""


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """The image file does not exist. Also a :class:`FileNotFoundError`."""


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _rescale_to_uint8(values: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map ``values`` to uint8: divide by ``full_scale`` if given, else min-max rescale (constant -> 0)."""
    values = values.astype(np.float64)
    if full_scale is None:
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    else:
        values = values / full_scale
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _high_depth_gray_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image)  # [H, W]; uint16 (either byte order), int32 or float32
    if image.mode in _SIXTEEN_BIT_MODES:
        full_scale: float | None = 65535.0 if image.mode != "I;16S" else None
    elif image.mode == "I":
        in_sixteen_bit_range = values.size > 0 and values.min() >= 0 and values.max() <= 65535
        full_scale = 65535.0 if in_sixteen_bit_range else None
    else:  # "F"
        if not np.isfinite(values).all():
            raise ImageError("the floating-point image contains NaN or infinite values")
        in_unit_range = values.size > 0 and values.min() >= 0.0 and values.max() <= 1.0
        full_scale = 1.0 if in_unit_range else None
    return Image.fromarray(_rescale_to_uint8(values, full_scale)).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB, following the rules in the module docstring.

    Args:
        image: A PIL image of any mode.

    Returns:
        A new (or, for an RGB input, the same) image of mode ``"RGB"``.

    Raises:
        ImageError: If ``image`` is not a PIL image, or its mode cannot be converted.

    Example:
        >>> gray16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
        >>> to_rgb(gray16).getpixel((1, 0))
        (255, 255, 255)
    """
    if not isinstance(image, Image.Image):
        raise ImageError(f"Expected a PIL.Image.Image, got {type(image).__name__}.")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _TRANSPARENT_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return _composite_on_white(image)
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        try:
            return _high_depth_gray_to_rgb(image)
        except ValueError as error:
            raise ImageError(f"Cannot convert the {mode} image to RGB: {error}.") from error
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(
            f"Cannot convert an image of mode {mode!r} to RGB ({error}); save it as an RGB PNG or JPEG."
        ) from error


def load_image(path: str | os.PathLike[str], *, max_pixels: int = 64_000_000) -> Image.Image:
    """Load an image file as an 8-bit RGB PIL image.

    The EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), so photos appear upright, and the image is
    converted with :func:`to_rgb`: transparency is composited over white, 16-bit grayscale is scaled to 8 bits.
    Multi-frame files (GIF, multi-page TIFF) yield their first frame. The file is fully read and closed before
    returning.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (width x height) before decoding them. PIL's own
            decompression-bomb limit (:data:`PIL.Image.MAX_IMAGE_PIXELS`) applies as well, so the effective limit is
            the smaller of the two.

    Returns:
        The image, mode ``"RGB"``.

    Raises:
        ImageNotFoundError: If ``path`` does not exist (also a :class:`FileNotFoundError`).
        ImageLoadError: If ``path`` is a directory, not an image, truncated or corrupt, too large, or of a mode that
            cannot be converted to RGB. The message names the file.

    Example:
        >>> import tempfile
        >>> path = f"{tempfile.mkdtemp()}/gray.png"
        >>> Image.new("L", (4, 2), 128).save(path)
        >>> image = load_image(path)
        >>> image.mode, image.size
        ('RGB', (4, 2))
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ImageError(f"max_pixels must be a positive integer, got {max_pixels!r}.")
    file_path = Path(path)
    if not file_path.exists():
        raise ImageNotFoundError(f"Image file '{file_path}' does not exist; check the path.")
    if file_path.is_dir():
        raise ImageLoadError(f"'{file_path}' is a directory, not an image file; pass the path of one image.")

    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; refuse those images too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file_path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"Image '{file_path}' has {width}x{height} = {width * height:,} pixels, more than "
                        f"max_pixels={max_pixels:,}; it could exhaust memory (a decompression bomb). Resize it, or "
                        "raise max_pixels if you trust the file."
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(
            f"Image '{file_path}' was refused as a possible decompression bomb ({error}). Resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(
            f"'{file_path}' is not an image file PIL can read (or its header is corrupt); use PNG, JPEG, WebP, "
            "TIFF or BMP."
        ) from error
    except PermissionError as error:
        raise ImageLoadError(f"Image file '{file_path}' cannot be read: permission denied.") from error
    except Exception as error:  # decoders raise OSError, SyntaxError, zlib.error, struct.error, ...
        raise ImageLoadError(
            f"Image file '{file_path}' is truncated or corrupt and could not be decoded ({type(error).__name__}: "
            f"{error}); re-export or re-download it."
        ) from error

    try:
        return to_rgb(image)
    except ValueError as error:
        raise ImageLoadError(f"Image file '{file_path}': {error}") from error


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """Convert a PIL image to a float tensor in ``[-1, 1]``, the range diffusers VAEs expect.

    Non-RGB images are converted with :func:`to_rgb` first. Pixel value ``v`` becomes ``v / 127.5 - 1``, so 0 maps
    to -1 and 255 to 1 exactly.

    Args:
        image: A PIL image of size ``(W, H)``.

    Returns:
        A float32 tensor of shape ``[3, H, W]`` with values in ``[-1, 1]``.

    Raises:
        ImageError: If ``image`` is not a PIL image or cannot be converted to RGB.

    Example:
        >>> image_to_tensor(Image.new("RGB", (5, 2), (255, 0, 0))).shape
        torch.Size([3, 2, 5])
    """
    rgb = to_rgb(image)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))  # [H, W, 3]
    return pixels.permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0  # [H, W, 3] -> [3, H, W]


def tensor_to_image(tensor: torch.Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> Image.Image:
    """Convert a ``[3, H, W]`` float tensor to an 8-bit RGB PIL image.

    Values are mapped linearly from ``value_range`` to ``[0, 255]``, clamped (VAE decoders overshoot slightly) and
    rounded. Use ``value_range=(0.0, 1.0)`` for tensors in ``[0, 1]`` (e.g. ``pipe(..., output_type="pt")``).

    Args:
        tensor: Float tensor of shape ``[3, H, W]``, on any device.
        value_range: The ``(low, high)`` values that map to black (0) and white (255); ``(-1.0, 1.0)`` by default.

    Returns:
        A PIL image of mode ``"RGB"`` and size ``(W, H)``.

    Raises:
        ImageError: If the tensor is not a finite floating-point ``[3, H, W]`` tensor, or ``value_range`` is invalid.

    Example:
        >>> tensor_to_image(torch.ones(3, 2, 4)).getpixel((0, 0))
        (255, 255, 255)
        >>> tensor_to_image(torch.zeros(3, 2, 4), value_range=(0.0, 1.0)).getpixel((0, 0))
        (0, 0, 0)
    """
    if not isinstance(tensor, torch.Tensor):
        raise ImageError(f"Expected a torch.Tensor of shape [3, H, W], got {type(tensor).__name__}.")
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        hint = " For a batch, pass one image, e.g. tensor[0]." if tensor.ndim == 4 else ""
        raise ImageError(f"Expected a tensor of shape [3, H, W], got {list(tensor.shape)}.{hint}")
    if not tensor.is_floating_point():
        raise ImageError(
            f"Expected a floating-point tensor, got {tensor.dtype}; convert uint8 images with .float() / 255."
        )
    if len(value_range) != 2 or not float(value_range[0]) < float(value_range[1]):
        raise ImageError(f"value_range must be (low, high) with low < high, got {value_range!r}.")
    values = tensor.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(values).all():
        raise ImageError("The image tensor contains NaN or infinite values.")
    low, high = float(value_range[0]), float(value_range[1])
    unit = ((values - low) / (high - low)).clamp(0.0, 1.0)
    pixels = (unit * 255.0).round().to(torch.uint8).permute(1, 2, 0)  # [3, H, W] -> [H, W, 3]
    return Image.fromarray(pixels.contiguous().numpy())
