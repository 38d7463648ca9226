"""The web app without a browser: request handling, bad inputs, files, the Gradio server's settings and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptattention import ConceptMaps
from conceptattention.app import AppInputError, AppLimits, MapService, parse_concepts, run_safely
from conceptattention.app.service import DISPLAY_SIDE, UNEXPECTED_ERROR_MESSAGE
from conceptattention.app.ui import legend_html, outcome_to_outputs
from conceptattention.cli import app as app_command
from conceptattention.cli import main as cli_main

from ..conftest import free_port
from .conftest import require_module


TOY_PROMPT = "a red boat on the sea under a yellow sun"
TOY_CONCEPTS = "boat, sun, sea, sky"


def generate_request(**changes: object) -> dict[str, object]:
    """A small, valid generate request for the toy model (4 steps keep it fast)."""
    request: dict[str, object] = {"prompt": TOY_PROMPT, "concepts": TOY_CONCEPTS, "seed": 0, "steps": 4}
    request.update(changes)
    return request


def run_folders(service: MapService) -> list[Path]:
    return sorted(service.work_dir.glob("run-*"))


# ----- concept parsing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("boat, sun, sea", ("boat", "sun", "sea")),
        ("boat\nred   car\n", ("boat", "red car")),
        ("boat, , sky,", ("boat", "sky")),
        (["boat", " sky "], ("boat", "sky")),
    ],
)
def test_parse_concepts_splits_on_commas_and_lines(text, expected):
    assert parse_concepts(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Enter at least one concept"),
        (" , ,", "Enter at least one concept"),
        (None, "Enter at least one concept"),
        ("sky, Sea, sky", "'sky' appears more than once"),
        ("x" * 61, "characters long; use at most 60"),
        (", ".join(f"c{index}" for index in range(13)), "13 concepts were given; this app allows at most 12"),
    ],
)
def test_parse_concepts_refuses_bad_lists(text, message):
    with pytest.raises(AppInputError, match=message):
        parse_concepts(text)


def test_limits_are_validated():
    with pytest.raises(AppInputError, match="max_side must be a positive integer"):
        AppLimits(max_side=0)


def test_unknown_colour_map_is_refused(toy_model, tmp_path):
    with pytest.raises(AppInputError, match="Unknown matplotlib colour map 'nope'"):
        MapService(toy_model, cmap="nope", work_dir=tmp_path)


# ----- generate ---------------------------------------------------------------------------------------------------


def test_generate_returns_maps_images_and_files(service):
    result = service.generate(**generate_request())
    concepts = ("boat", "sun", "sea", "sky")
    assert result.maps.concepts == concepts
    assert result.image.size == (32, 32)  # the toy model's default size
    assert result.display_image.size == (DISPLAY_SIDE, DISPLAY_SIDE)
    assert [concept for _, concept in result.heatmaps] == list(concepts)
    assert [concept for _, concept in result.overlays] == list(concepts)
    for heatmap, _ in result.heatmaps:
        assert heatmap.size == result.display_image.size
    assert result.segmentation.size == result.display_image.size
    segmentation_colours = {tuple(colour) for colour in np.asarray(result.segmentation).reshape(-1, 3)}
    assert segmentation_colours <= {colour for _, colour in result.legend}
    assert [concept for concept, _ in result.legend] == list(concepts)

    zip_path, tensor_path = result.files
    assert zip_path.name == "conceptattention-maps.zip" and tensor_path.name == "maps.safetensors"
    assert ConceptMaps.load(tensor_path) == result.maps
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        settings = json.loads(archive.read("settings.json"))
        image = Image.open(io.BytesIO(archive.read("image.png")))
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(result.image))
    expected = {"image.png", "segmentation.png", "grid.png", "settings.json"}
    expected |= {f"heatmaps/{index:02d}_{concept}.png" for index, concept in enumerate(concepts)}
    expected |= {f"overlays/{index:02d}_{concept}.png" for index, concept in enumerate(concepts)}
    assert names == expected
    assert settings["prompt"] == TOY_PROMPT and settings["seed"] == 0
    assert settings["pipeline_kwargs"]["num_inference_steps"] == 4


TOY_WORDS = ("a", "red", "boat", "on", "the", "sea", "under", "a#2", "yellow", "sun")


def test_generate_maps_the_prompt_words(service):
    """The prompt-word switch: words only (empty concept box), or after the concepts; the image is unchanged."""
    assert service.offers_prompt_words  # the shipped model is a FLUX.1 architecture
    plain = service.generate(**generate_request())
    words = service.generate(**generate_request(concepts="", prompt_words=True))
    both = service.generate(**generate_request(prompt_words=True))
    assert words.maps.concepts == TOY_WORDS
    # a word equal to a concept is labelled word#2, as a repeated word is
    renamed = {"boat": "boat#2", "sea": "sea#2", "sun": "sun#2"}
    assert both.maps.concepts == ("boat", "sun", "sea", "sky", *(renamed.get(word, word) for word in TOY_WORDS))
    assert [concept for _, concept in both.heatmaps] == list(both.maps.concepts)
    for result in (words, both):
        assert np.array_equal(np.asarray(result.image), np.asarray(plain.image))
        torch.testing.assert_close(result.maps.tensor.sum(0), torch.ones_like(result.maps.tensor[0]))
    with pytest.raises(AppInputError, match="on or off"):
        service.generate(**generate_request(prompt_words="yes"))
    with pytest.raises(AppInputError, match="at least one concept"):
        service.generate(**generate_request(concepts=""))  # without the switch a concept is still needed


def test_generate_is_seeded(service):
    first = service.generate(**generate_request(seed=3))
    again = service.generate(**generate_request(seed=3))
    other = service.generate(**generate_request(seed=4))
    assert torch.equal(first.maps.tensor, again.maps.tensor)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_method_controls_reach_the_method(service):
    result = service.generate(**generate_request(layers=[5, 1], space="cross_attention", softmax=False))
    config = result.maps.settings
    assert config["resolved_layers"] == ["transformer_blocks.1", "transformer_blocks.5"]
    assert config["space"] == "cross_attention"
    assert config["effective_softmax"] is False


def test_defaults_come_from_the_model(service):
    assert service.default_layers == (2, 3, 4, 5)  # last four of the toy model's six joint blocks
    assert service.default_side == (32, 32)
    assert service.default_steps == 20
    assert service.size_multiple == 2
    assert "boat" in service.vocabulary and "," not in service.vocabulary


def test_single_concept_warning_is_shown(service):
    outcome = run_safely(lambda: service.generate(**generate_request(concepts="boat")))
    assert outcome.error is None
    assert "Softmax over a single concept" in outcome.status


def test_old_runs_are_deleted(toy_model, tmp_path):
    service = MapService(toy_model, limits=AppLimits(kept_runs=2), work_dir=tmp_path)
    results = [service.generate(**generate_request(steps=1)) for _ in range(3)]
    assert [path.name for path in run_folders(service)] == ["run-000002", "run-000003"]
    assert all(path.exists() for path in results[-1].files)
    assert not results[0].files[0].exists()


# ----- bad inputs: a clear message in the page, no result, no files -------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"concepts": ""}, "Enter at least one concept"),
        ({"concepts": "boat, boat"}, "'boat' appears more than once"),
        ({"concepts": "sky " * 20}, "characters long"),
        ({"concepts": "boat, dragon"}, "uses words this model does not know ('dragon')"),
        ({"concepts": "boat, 🚤"}, "uses words this model does not know ('🚤')"),  # emoji: no \\w, still refused
        ({"concepts": "boat, sea!"}, "uses words this model does not know ('sea!')"),
        ({"prompt": "  "}, "The prompt is empty"),
        ({"prompt": "boat " * 200}, "The prompt is 999 characters long; use at most 500"),
        ({"height": 33}, "Height must be a multiple of 2"),
        ({"width": 0}, "Width must be a whole number from 2 to 2048, got 0"),
        ({"width": 4096}, "Width must be a whole number from 2 to 2048"),
        ({"steps": None}, None),  # empty box: the model's default is used
        ({"steps": 0}, "Steps must be a whole number from 1 to 100, got 0"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"seed": -1}, "Seed must be a whole number from 0"),
        ({"guidance_scale": float("nan")}, "Guidance scale must be a number in [0, 100]"),
        ({"layers": []}, "Select at least one layer"),
        ({"layers": [9]}, "Each layer must be a whole number from 0 to 5, got 9"),
        ({"space": "bogus"}, "Space must be one of output, cross_attention, value"),
    ],
)
def test_bad_generate_inputs_are_answered_with_a_message(service, changes, message):
    outcome = run_safely(lambda: service.generate(**generate_request(**changes)))
    if message is None:
        assert outcome.error is None and outcome.result is not None
        return
    assert outcome.result is None
    assert message in outcome.error
    assert outcome.status.startswith("**Error:**")
    assert "Traceback" not in outcome.status
    assert run_folders(service) == []
    status, image, segmentation, legend, heatmaps, overlays, downloads = outcome_to_outputs(outcome)
    assert (image, segmentation, legend, heatmaps, overlays, downloads) == (None, None, "", [], [], None)


def test_unexpected_errors_are_logged_not_shown(service, monkeypatch, caplog):
    class Exploding:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise KeyError("secret internal detail")

    monkeypatch.setattr("conceptattention.app.service.ConceptAttention", Exploding)
    with caplog.at_level(logging.ERROR, logger="conceptattention.app"):
        outcome = run_safely(lambda: service.generate(**generate_request()))
    assert outcome.error == UNEXPECTED_ERROR_MESSAGE
    assert "secret" not in outcome.status and "KeyError" not in outcome.status
    assert any(record.exc_info and "secret internal detail" in str(record.exc_info[1]) for record in caplog.records)
    monkeypatch.undo()
    assert run_safely(lambda: service.generate(**generate_request(steps=1))).error is None  # the lock was released


def test_a_failed_write_leaves_no_files(service, monkeypatch):
    def failing_save(self: ConceptMaps, path: object) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(ConceptMaps, "save", failing_save)
    outcome = run_safely(lambda: service.generate(**generate_request(steps=1)))
    assert outcome.error == UNEXPECTED_ERROR_MESSAGE
    assert run_folders(service) == []


# ----- explain an image -------------------------------------------------------------------------------------------


@pytest.fixture
def toy_photo(tmp_path) -> Path:
    path = tmp_path / "upload" / "photo.png"
    path.parent.mkdir()
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:24] = (90, 160, 230)  # sky
    pixels[24:] = (20, 60, 180)  # sea
    pixels[16:32, 24:40] = (220, 30, 30)  # a red block
    Image.fromarray(pixels).save(path)
    return path


def test_explain_maps_an_uploaded_image(service, toy_photo):
    result = service.explain(image_path=str(toy_photo), concepts="boat, sea, sky", samples=2, noise_level=0.4)
    assert result.maps.concepts == ("boat", "sea", "sky")
    assert result.image.size == (64, 48)
    assert result.display_image.size == (DISPLAY_SIDE, 288)  # aspect ratio kept
    assert result.maps.settings["num_samples"] == 2 and result.maps.settings["noise_level"] == 0.4
    assert len(result.overlays) == 3 and all(path.exists() for path in result.files)


def write_blank(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` bilevel PNG: megapixels that take only a few kB on disk."""
    Image.new("1", (side, side)).save(path)
    return path


@pytest.mark.parametrize(
    ("make_file", "limits", "message"),
    [
        (lambda folder: None, AppLimits(), "Upload an image first"),
        (lambda folder: folder / "gone.png", AppLimits(), "The uploaded file is gone from the server"),
        (
            lambda folder: (folder / "notes.png").write_bytes(b"this is not an image") and folder / "notes.png",
            AppLimits(),
            "'notes.png' is not an image file PIL can read",
        ),
        (
            lambda folder: write_blank(folder / "huge.png", 6_000),
            AppLimits(),
            "The image is too large: 6000x6000 pixels (36.0 megapixels); this app accepts images of at most 25.0 "
            "megapixels. Resize it and upload it again.",
        ),
        (
            lambda folder: write_blank(folder / "bomb.png", 12_000),
            AppLimits(),
            "The image is too large: 12000x12000 pixels (144.0 megapixels); this app accepts images of at most 25.0",
        ),
        (  # above PIL's own decompression-bomb limit (89.5 megapixels): that one applies, in the same words
            lambda folder: write_blank(folder / "bomb.png", 12_000),
            AppLimits(max_pixels=200_000_000),
            "The image is too large: 12000x12000 pixels (144.0 megapixels); this app accepts images of at most 89.5",
        ),
        (
            lambda folder: (folder / "big.bin").write_bytes(bytes(3 * 2**20)) and folder / "big.bin",
            AppLimits(max_upload_bytes=2**20),
            "The uploaded file is 3.0 MB; this app accepts at most 1.0 MB",
        ),
    ],
)
def test_bad_uploads_are_refused_with_a_message(toy_model, tmp_path, make_file, limits, message):
    service = MapService(toy_model, limits=limits, work_dir=tmp_path / "work")
    folder = tmp_path / "uploads"
    folder.mkdir()
    path = make_file(folder)
    outcome = run_safely(lambda: service.explain(image_path=str(path) if path else None, concepts="boat, sky"))
    assert outcome.result is None
    assert message in outcome.error
    assert str(folder) not in outcome.error  # the server's folders are not shown
    assert "MAX_IMAGE_PIXELS" not in outcome.error and "max_pixels" not in outcome.error  # no advice for a server admin
    assert run_folders(service) == []


def test_explain_settings_name_the_file_and_its_hash_never_a_server_path(service, toy_photo):
    result = service.explain(image_path=str(toy_photo), concepts="boat, sky", samples=1)
    with zipfile.ZipFile(result.files[0]) as archive:
        text = archive.read("settings.json").decode()
    settings = json.loads(text)
    assert settings["image"] == toy_photo.name
    assert settings["image_sha256"] == hashlib.sha256(toy_photo.read_bytes()).hexdigest()
    assert result.settings == settings
    assert str(toy_photo.parent) not in text and "/" not in settings["image"]


def test_explain_refuses_a_bad_noise_level_and_sample_count(service, toy_photo):
    outcome = run_safely(lambda: service.explain(image_path=str(toy_photo), concepts="boat, sky", noise_level=0))
    assert "Noise level must be a number in (0, 1], got 0" in outcome.error
    outcome = run_safely(lambda: service.explain(image_path=str(toy_photo), concepts="boat, sky", samples=17))
    assert "Samples must be a whole number from 1 to 16, got 17" in outcome.error


# ----- models other than the toy model -----------------------------------------------------------------------------


def test_a_model_folder_works_like_in_the_cli(tmp_path, toy_photo):
    """Any model the CLI accepts: here a tiny SD3 pipeline saved as a diffusers folder and loaded offline."""
    from conceptattention.models import load_model
    from conceptattention.testing import tiny_sd3_pipeline

    folder = tmp_path / "tiny-sd3"
    tiny_sd3_pipeline().save_pretrained(folder)
    service = MapService(load_model(str(folder)), work_dir=tmp_path / "work")
    assert service.vocabulary is None  # no vocabulary check outside the toy model
    pipeline = service.pipeline
    native = pipeline.default_sample_size * pipeline.vae_scale_factor
    assert service.default_side == (native, native)  # the pipeline's own defaults when the model gives none
    assert (service.default_steps, service.default_guidance_scale) == (28, 7.0)  # StableDiffusion3Pipeline's
    result = service.generate(
        prompt="a house by the sea", concepts="house, sea", steps=2, height=32, width=32, guidance_scale=2.0
    )
    assert result.maps.settings["architecture"] == "sd3"
    assert result.image.size == (32, 32) and len(result.overlays) == 2
    explained = service.explain(image_path=str(toy_photo), concepts="house, sea", samples=1)
    assert explained.maps.concepts == ("house", "sea")


def test_a_video_model_shows_its_first_frame(tmp_path):
    from conceptattention.models import LoadedModel
    from conceptattention.testing import tiny_cogvideox_pipeline

    loaded = LoadedModel(tiny_cogvideox_pipeline(), "tiny-cogvideox", "tiny CogVideoX", {"max_sequence_length": 16})
    service = MapService(loaded, work_dir=tmp_path / "work")
    assert service.is_video
    result = service.generate(
        prompt="a boat", concepts="boat, sea", steps=2, height=16, width=24, frames=9, guidance_scale=2.0
    )
    assert result.maps.num_frames == 3  # 9 frames, temporally compressed 4x by the VAE
    assert result.image.size == (24, 16)
    assert any("first frame" in note for note in result.notes)
    outcome = run_safely(lambda: service.generate(prompt="a boat", concepts="boat, sea", frames=0))
    assert "Frames must be a whole number from 1 to 129, got 0" in outcome.error


# ----- page helpers -----------------------------------------------------------------------------------------------


def test_legend_html_escapes_concepts():
    markup = legend_html([("<script>x</script>", (1, 2, 3)), ("sky", (4, 5, 6))])
    assert "<script>" not in markup and "&lt;script&gt;" in markup
    assert "rgb(1,2,3)" in markup and "rgb(4,5,6)" in markup


# ----- the Gradio server (HTTP, no browser) ------------------------------------------------------------------------


@pytest.fixture
def running_app(toy_model, tmp_path):
    """The page served in this process on a free port, with a 1 MB upload limit."""
    require_module("gradio", "install the app extra: pip install -e '.[app]'")
    from conceptattention.app import launch_app

    service = MapService(toy_model, limits=AppLimits(max_upload_bytes=2**20), work_dir=tmp_path / "work")
    demo = launch_app(service, port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo, service
    finally:
        demo.close()


def test_server_is_local_queued_one_at_a_time_and_hides_errors(running_app):
    demo, _ = running_app
    assert demo.server_name == "127.0.0.1"
    assert demo.share is False
    assert demo.show_error is False
    assert demo.max_file_size == 2**20
    assert demo._queue.default_concurrency_limit == 1
    model_events = [function for function in demo.fns.values() if function.name in ("on_generate", "on_explain")]
    assert {function.api_name for function in model_events} == {"generate", "explain"}
    assert {(function.concurrency_id, function.concurrency_limit) for function in model_events} == {("model", 1)}


def test_uploads_over_the_size_limit_are_refused(running_app):
    demo, _ = running_app
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + bytes(2 * 2**20) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{demo.local_url}gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    assert raised.value.code == 413


def test_prompt_word_switch_reaches_the_service(running_app):
    """The page's generate inputs in order: the switch sits after the frame count (gradio_client, positional)."""
    require_module("gradio_client", "install the app extra: pip install -e '.[app]'")
    from gradio_client import Client

    demo, _ = running_app
    method = [[2, 3, 4, 5], "output", True, False]
    output = Client(demo.local_url, verbose=False).predict(
        TOY_PROMPT, "", 0, 4, 32, 32, 0.0, None, True, *method, api_name="/generate"
    )
    status, heatmaps = output[0], output[4]
    assert status.startswith("**Done**"), status
    assert [item["caption"] for item in heatmaps] == list(TOY_WORDS)


def test_concurrent_users_are_served_one_after_the_other(running_app, toy_photo, monkeypatch):
    """Two generate requests and an explain request at once: never two runs at a time, each result its own."""
    require_module("gradio_client", "install the app extra: pip install -e '.[app]'")
    from gradio_client import Client, handle_file

    demo, service = running_app
    active, most_active, guard = [0], [0], threading.Lock()

    def tracked(method):
        def wrapper(**kwargs):
            with guard:
                active[0] += 1
                most_active[0] = max(most_active[0], active[0])
            try:
                time.sleep(0.3)  # widen the window in which a second run could start
                return method(**kwargs)
            finally:
                with guard:
                    active[0] -= 1

        return wrapper

    reference = {
        concepts: service.generate(**generate_request(concepts=concepts)).maps for concepts in ("boat, sky", "sun, sea")
    }
    monkeypatch.setattr(service, "generate", tracked(service.generate))
    monkeypatch.setattr(service, "explain", tracked(service.explain))
    method = [[2, 3, 4, 5], "output", True, True]  # layers, space, softmax, keep the maps of each step

    def call_generate(concepts: str) -> tuple:
        client = Client(demo.local_url, verbose=False)
        return client.predict(TOY_PROMPT, concepts, 0, 4, 32, 32, 0.0, None, False, *method, api_name="/generate")

    def call_explain() -> tuple:
        client = Client(demo.local_url, verbose=False)
        return client.predict(handle_file(str(toy_photo)), "boat, sky", "", 0.5, 2, 0, *method, api_name="/explain")

    with ThreadPoolExecutor(max_workers=3) as pool:
        generated = {concepts: pool.submit(call_generate, concepts) for concepts in reference}
        explained = pool.submit(call_explain)
        outputs = {concepts: future.result(timeout=120) for concepts, future in generated.items()}
        explain_output = explained.result(timeout=120)
    assert most_active[0] == 1
    for concepts, output in outputs.items():
        status, heatmaps, overlays, downloads = output[0], output[4], output[5], output[6]
        assert status.startswith("**Done**"), status
        assert len(heatmaps) == len(overlays) == 2
        tensor_file = next(path for path in downloads if path.endswith(".safetensors"))
        assert ConceptMaps.load(tensor_file) == reference[concepts]
    assert explain_output[0].startswith("**Done**") and len(explain_output[5]) == 2


# ----- the command ------------------------------------------------------------------------------------------------


def app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conceptattention")
    app_command.register(parser.add_subparsers())
    return parser


def test_command_defaults_bind_to_localhost_without_sharing():
    args = app_parser().parse_args(["app"])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, None)
    assert args.run is app_command.run


def test_command_serves_the_toy_model(monkeypatch):
    require_module("gradio", "install the app extra: pip install -e '.[app]'")
    calls = []
    monkeypatch.setattr(
        "conceptattention.app.launch_app", lambda service, **kwargs: calls.append((service, kwargs))
    )
    args = app_parser().parse_args(["app", "--port", "7999", "--max-upload-mb", "2"])
    assert app_command.run(args) == 0
    (service, kwargs), = calls
    assert kwargs == {"host": "127.0.0.1", "port": 7999, "share": False}
    assert service.limits.max_upload_bytes == 2 * 2**20
    assert service.loaded.name == "shapesworld"


@pytest.fixture
def cli_with_app():
    assert "app" in cli_main.SUBCOMMANDS
    return cli_main.main


def test_command_reports_a_missing_gradio(cli_with_app, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)  # makes `import gradio` fail
    assert cli_with_app(["app"]) == 2
    assert "pip install 'conceptattention[app]'" in capsys.readouterr().err


def test_command_refuses_a_bad_port(cli_with_app, capsys):
    assert cli_with_app(["app", "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535, got 70000" in capsys.readouterr().err


def test_command_reports_a_taken_port(cli_with_app, monkeypatch, capsys):
    def taken(service, **kwargs):
        raise OSError("Cannot find empty port in range: 7860-7860")

    monkeypatch.setattr("conceptattention.app.launch_app", taken)
    monkeypatch.setattr("conceptattention.app.ui.import_gradio", lambda: None)
    assert cli_with_app(["app"]) == 2
    assert "choose another --port" in capsys.readouterr().err
