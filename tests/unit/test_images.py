"""Tests for conceptattention.images: loading image files and converting images to and from tensors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conceptattention.images import (
    ImageLoadError,
    ImageNotFoundError,
    image_to_tensor,
    load_image,
    tensor_to_image,
    to_rgb,
)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """The expected 16 -> 8 bit mapping: round(v * 255 / 65535)."""
    return np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.int64)


class TestLoadImageErrors:
    """load_image refuses bad files with clear messages."""

    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.png"
        with pytest.raises(ImageNotFoundError, match="nope.png") as error_info:
            load_image(path)
        assert isinstance(error_info.value, FileNotFoundError)
        assert isinstance(error_info.value, ValueError)

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(ImageLoadError, match="is a directory"):
            load_image(tmp_path)

    def test_not_an_image(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.png"
        path.write_text("this is not a PNG")
        with pytest.raises(ImageLoadError, match="notes.png.*not an image"):
            load_image(path)

    def test_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
        with pytest.raises(ImageLoadError, match="empty.jpg.*not an image"):
            load_image(path)

    def test_truncated_jpeg(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
        noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
        path = tmp_path / "cut.jpg"
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        with pytest.raises(ImageLoadError, match="cut.jpg.*truncated or corrupt"):
            load_image(path)

    def test_corrupt_png_data(self, tmp_path: Path) -> None:
        noise = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        data = bytearray(buffer.getvalue())
        data_start = data.index(b"IDAT") + 4
        data[data_start + 10 : data_start + 60] = bytes(50)  # zero out part of the compressed pixel stream
        path = tmp_path / "broken.png"
        path.write_bytes(bytes(data))
        with pytest.raises(ImageLoadError, match="broken.png.*truncated or corrupt"):
            load_image(path)

    def test_images_above_max_pixels_are_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "big.png"
        Image.new("RGB", (100, 50)).save(path)
        with pytest.raises(ImageLoadError, match="max_pixels"):
            load_image(path, max_pixels=4999)
        assert load_image(path, max_pixels=5000).size == (100, 50)  # the limit itself is allowed

    @pytest.mark.parametrize("side", [40, 50])  # 1,600 px: PIL warns; 2,500 px: PIL raises (limit 1,000)
    def test_pil_decompression_bomb_checks_are_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int
    ) -> None:
        path = tmp_path / "bomb.png"
        Image.new("RGB", (side, side)).save(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        with pytest.raises(ImageLoadError, match="bomb.png.*decompression bomb"):
            load_image(path)

    @pytest.mark.parametrize("max_pixels", [0, -1, 2.5, True])
    def test_invalid_max_pixels(self, tmp_path: Path, max_pixels: object) -> None:
        path = tmp_path / "ok.png"
        Image.new("RGB", (2, 2)).save(path)
        with pytest.raises(ValueError, match="max_pixels"):
            load_image(path, max_pixels=max_pixels)  # type: ignore[arg-type]


class TestLoadImageConversions:
    """load_image returns 8-bit RGB for every kind of input."""

    def test_rgb_png_is_loaded_exactly(self, tmp_path: Path) -> None:
        pixels = np.random.default_rng(2).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
        path = tmp_path / "rgb.png"
        Image.fromarray(pixels).save(path)
        image = load_image(path)
        assert image.mode == "RGB"
        assert image.size == (7, 5)
        np.testing.assert_array_equal(np.asarray(image), pixels)

    def test_image_survives_deleting_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "rgb.png"
        Image.new("RGB", (3, 2), (10, 20, 30)).save(path)
        image = load_image(path)
        path.unlink()
        assert image.getpixel((2, 1)) == (10, 20, 30)

    def test_grayscale(self, tmp_path: Path) -> None:
        gray = np.array([[0, 100, 255]], dtype=np.uint8)
        path = tmp_path / "gray.png"
        Image.fromarray(gray).save(path)
        pixels = _pixels(load_image(path))
        assert pixels.shape == (1, 3, 3)
        for channel in range(3):
            np.testing.assert_array_equal(pixels[..., channel], gray)

    def test_one_bit(self, tmp_path: Path) -> None:
        bilevel = Image.new("1", (2, 1), 0)
        bilevel.putpixel((1, 0), 1)
        path = tmp_path / "bits.png"
        bilevel.save(path)
        image = load_image(path)
        assert image.getpixel((0, 0)) == (0, 0, 0)
        assert image.getpixel((1, 0)) == (255, 255, 255)

    def test_rgba_is_composited_on_white(self, tmp_path: Path) -> None:
        rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
        path = tmp_path / "rgba.png"
        Image.fromarray(rgba).save(path)
        pixels = _pixels(load_image(path))
        np.testing.assert_array_equal(pixels[0, 0], [255, 255, 255])  # transparent -> white
        np.testing.assert_array_equal(pixels[0, 1], [255, 0, 0])  # opaque -> unchanged
        expected_half = 255 * (1 - 128 / 255)  # black at alpha 128 over white
        np.testing.assert_allclose(pixels[0, 2], [expected_half] * 3, atol=1)

    def test_la_is_composited_on_white(self, tmp_path: Path) -> None:
        luminance_alpha = Image.new("LA", (2, 1), (0, 0))
        luminance_alpha.putpixel((1, 0), (50, 255))
        path = tmp_path / "la.png"
        luminance_alpha.save(path)
        image = load_image(path)
        assert image.getpixel((0, 0)) == (255, 255, 255)
        assert image.getpixel((1, 0)) == (50, 50, 50)

    def test_palette_with_transparency_is_composited_on_white(self, tmp_path: Path) -> None:
        palette_image = Image.new("P", (2, 1), 0)
        palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        palette_image.putpixel((1, 0), 1)
        path = tmp_path / "palette.png"
        palette_image.save(path, transparency=1)
        image = load_image(path)
        assert image.getpixel((0, 0)) == (255, 0, 0)
        assert image.getpixel((1, 0)) == (255, 255, 255)  # the transparent blue index becomes white

    def test_palette_without_transparency(self, tmp_path: Path) -> None:
        palette_image = Image.new("P", (1, 1), 0)
        palette_image.putpalette([0, 128, 0] + [0] * 765)
        path = tmp_path / "palette.png"
        palette_image.save(path)
        assert load_image(path).getpixel((0, 0)) == (0, 128, 0)

    def test_sixteen_bit_png_is_scaled_not_clipped(self, tmp_path: Path) -> None:
        values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
        path = tmp_path / "deep.png"
        Image.fromarray(values).save(path)
        with Image.open(path) as reopened:
            assert reopened.mode in ("I;16", "I")  # a genuine 16-bit file
        pixels = _pixels(load_image(path))
        np.testing.assert_array_equal(pixels[..., 0], _sixteen_to_eight(values))
        np.testing.assert_array_equal(pixels[0, :, 0], [0, 1, 4, 128, 255])  # clipping would give 255 for 257, 1000
        np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])

    def test_sixteen_bit_big_endian_tiff(self, tmp_path: Path) -> None:
        values = np.array([[0, 4096, 65535]], dtype=">u2")
        big_endian = Image.frombytes("I;16B", (3, 1), values.tobytes())
        path = tmp_path / "deep.tiff"
        big_endian.save(path)
        with Image.open(path) as reopened:
            assert reopened.mode == "I;16B"
        pixels = _pixels(load_image(path))
        np.testing.assert_array_equal(pixels[..., 1], _sixteen_to_eight(values.astype(np.uint16)))

    def test_32_bit_integer_image_in_sixteen_bit_range(self, tmp_path: Path) -> None:
        values = np.array([[0, 257, 65535]], dtype=np.int32)
        path = tmp_path / "int.tiff"
        Image.fromarray(values).save(path)
        np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], [[0, 1, 255]])

    def test_32_bit_integer_image_outside_sixteen_bit_range_is_min_max_scaled(self, tmp_path: Path) -> None:
        values = np.array([[-100, 50, 200]], dtype=np.int32)
        path = tmp_path / "int.tiff"
        Image.fromarray(values).save(path)
        np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], [[0, 128, 255]])  # 150/300*255 = 127.5

    def test_float_image(self, tmp_path: Path) -> None:
        unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
        path = tmp_path / "float.tiff"
        Image.fromarray(unit).save(path)
        np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], [[0, 128, 255]])
        wide = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
        Image.fromarray(wide).save(path)
        np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], [[0, 128, 255]])

    def test_cmyk_tiff(self, tmp_path: Path) -> None:
        path = tmp_path / "cmyk.tiff"
        Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(path)  # no cyan, full magenta and yellow: red
        assert load_image(path).getpixel((1, 1)) == (255, 0, 0)

    def test_cmyk_jpeg(self, tmp_path: Path) -> None:
        path = tmp_path / "cmyk.jpg"
        Image.new("CMYK", (8, 8), (255, 0, 255, 0)).save(path, quality=100)  # cyan + yellow: green
        red, green, blue = load_image(path).getpixel((4, 4))
        assert red < 10 and green > 245 and blue < 10

    def test_exif_orientation_is_applied(self, tmp_path: Path) -> None:
        landscape = Image.new("RGB", (3, 2), (0, 0, 0))
        landscape.putpixel((0, 0), (255, 0, 0))
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        path = tmp_path / "rotated.png"
        landscape.save(path, exif=exif)
        image = load_image(path)
        assert image.size == (2, 3)
        assert image.getpixel((1, 0)) == (255, 0, 0)  # top-left went to top-right
        assert image.getpixel((0, 0)) == (0, 0, 0)

    def test_multi_frame_gif_gives_the_first_frame(self, tmp_path: Path) -> None:
        frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
        path = tmp_path / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:])
        assert load_image(path).getpixel((2, 2)) == (255, 0, 0)

    def test_to_rgb_refuses_non_images(self) -> None:
        with pytest.raises(ValueError, match="PIL.Image.Image"):
            to_rgb(np.zeros((2, 2, 3)))  # type: ignore[arg-type]

    def test_to_rgb_returns_rgb_images_unchanged(self) -> None:
        image = Image.new("RGB", (2, 2), (1, 2, 3))
        assert to_rgb(image) is image


class TestTensorConversion:
    """image_to_tensor and tensor_to_image."""

    def test_image_to_tensor_range_shape_and_channel_order(self) -> None:
        image = Image.new("RGB", (5, 3), (255, 0, 128))
        tensor = image_to_tensor(image)
        assert tensor.shape == (3, 3, 5)
        assert tensor.dtype == torch.float32
        assert torch.all(tensor[0] == 1.0)
        assert torch.all(tensor[1] == -1.0)
        torch.testing.assert_close(tensor[2], torch.full((3, 5), 128 / 127.5 - 1.0))

    def test_image_to_tensor_composites_transparency(self) -> None:
        tensor = image_to_tensor(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
        assert torch.all(tensor == 1.0)  # white

    def test_round_trip_is_exact(self) -> None:
        pixels = np.random.default_rng(3).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        np.testing.assert_array_equal(np.asarray(tensor_to_image(image_to_tensor(image))), pixels)

    def test_unit_range_and_clamping(self) -> None:
        tensor = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2]).reshape(1, 1, 5).expand(3, 1, 5)  # [3, 1, 5]
        image = tensor_to_image(tensor, value_range=(0.0, 1.0))
        assert image.mode == "RGB" and image.size == (5, 1)
        np.testing.assert_array_equal(np.asarray(image)[0, :, 0], [0, 128, 255, 255, 0])
        signed = tensor_to_image(tensor)  # interpreted in [-1, 1]
        np.testing.assert_array_equal(np.asarray(signed)[0, :, 0], [128, 191, 255, 255, 102])

    def test_half_precision_and_grad_tensors(self) -> None:
        tensor = torch.zeros(3, 2, 2, dtype=torch.bfloat16, requires_grad=True)
        assert tensor_to_image(tensor).getpixel((0, 0)) == (128, 128, 128)

    def test_errors(self) -> None:
        with pytest.raises(ValueError, match="torch.Tensor"):
            tensor_to_image(np.zeros((3, 2, 2)))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"tensor\[0\]"):
            tensor_to_image(torch.zeros(1, 3, 2, 2))
        with pytest.raises(ValueError, match=r"\[3, H, W\]"):
            tensor_to_image(torch.zeros(4, 2, 2))
        with pytest.raises(ValueError, match="floating-point"):
            tensor_to_image(torch.zeros(3, 2, 2, dtype=torch.uint8))
        with pytest.raises(ValueError, match="NaN"):
            tensor_to_image(torch.full((3, 2, 2), float("nan")))
        with pytest.raises(ValueError, match="low < high"):
            tensor_to_image(torch.zeros(3, 2, 2), value_range=(1.0, 1.0))
        with pytest.raises(ValueError, match="PIL.Image.Image"):
            image_to_tensor(torch.zeros(3, 2, 2))  # type: ignore[arg-type]
