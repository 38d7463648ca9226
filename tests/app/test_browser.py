"""End to end in a real browser: ``conceptattention app`` in a subprocess, driven by headless Chromium.

The browser is Debian's ``chromium`` package (``scripts/install_browser.sh``), launched by Playwright for Python
through its executable path; Playwright's own browser downloads are never used. In CI (``CI=true``) a missing
Chromium, Playwright or Gradio fails these tests; elsewhere they are skipped with the install command (see
``conftest.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conceptattention import ConceptMaps

from ..conftest import free_port
from .conftest import require, require_module


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_SECONDS = 90
RESULT_SECONDS = 60

# Runs the real command line; adds the subcommand to the CLI's list when the installed version lacks it.
LAUNCHER = """
import sys
from conceptattention.cli import main as cli
sys.exit(cli.main(sys.argv[1:]))
"""


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with status {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the app did not answer on {url} within {SERVER_START_SECONDS} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    """``conceptattention app --port N`` on the shipped toy model, served on 127.0.0.1."""
    require_module("gradio", "install the app extra: pip install -e '.[app]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("app") / "server.log"
    temporary = tmp_path_factory.mktemp("server-tmp")  # the app's run files and Gradio's cache go here
    environment = {
        **os.environ,
        "TMPDIR": str(temporary),
        "GRADIO_TEMP_DIR": str(temporary / "gradio"),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "app", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, log_path)
        yield url
    finally:
        process.terminate()  # SIGTERM: the command stops like on Ctrl-C
        try:
            status = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
            pytest.fail(f"the app did not stop on SIGTERM:\n{log_path.read_text()[-4000:]}")
    assert status == 0, f"the app stopped with status {status}:\n{log_path.read_text()[-4000:]}"
    assert list(temporary.glob("conceptattention-app-*")) == []  # the run files were deleted on the way out


@pytest.fixture(scope="module")
def browser():
    require_module("playwright", "install it: pip install playwright (no `playwright install` needed)")
    require(CHROMIUM.exists(), f"Chromium ({CHROMIUM})", "install it: sudo bash scripts/install_browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(RESULT_SECONDS * 1000)
    page.goto(app_url, wait_until="load")
    page.locator("#generate-button").wait_for(state="visible")
    try:
        yield page
    finally:
        context.close()


def fill_generate_form(page, concepts: str) -> None:
    page.locator("#prompt").get_by_role("textbox").fill("a red boat on the sea under a yellow sun")
    page.locator("#generate-concepts").get_by_role("textbox").fill(concepts)
    page.locator("#steps").get_by_role("spinbutton").fill("6")


def rendered_image_sizes(page, selector: str) -> list[list[int]]:
    """``[naturalWidth, naturalHeight]`` of each fully loaded ``<img>`` under ``selector``."""
    return page.locator(selector).evaluate_all(
        "images => images.filter(image => image.complete).map(image => [image.naturalWidth, image.naturalHeight])"
    )


def test_generate_shows_every_concept_map(page, tmp_path):
    concepts = ["boat", "sun", "sea", "sky"]
    fill_generate_form(page, ", ".join(concepts))
    page.locator("#generate-button").click()
    status = page.locator("#status")
    status.filter(has_text="Done").wait_for()
    assert "4 concepts" in status.inner_text()

    for gallery in ("#heatmaps", "#overlays"):
        images = page.locator(f"{gallery} img")
        page.wait_for_function(
            "selector => { const images = [...document.querySelectorAll(selector)];"
            " return images.length === 4 && images.every(image => image.complete && image.naturalWidth > 0); }",
            arg=f"{gallery} img",
        )
        assert images.count() == len(concepts)
        assert all(width > 0 and height > 0 for width, height in rendered_image_sizes(page, f"{gallery} img"))
        for concept in concepts:
            assert page.locator(gallery).get_by_text(concept, exact=True).count() >= 1

    for single in ("#result-image img", "#segmentation img"):
        page.wait_for_function(
            "selector => { const image = document.querySelector(selector);"
            " return image !== null && image.complete && image.naturalWidth > 0; }",
            arg=single,
        )
    assert page.locator("#legend .legend-item").all_inner_texts() == concepts

    links = page.locator("#downloads a")
    links.first.wait_for()
    hrefs = links.evaluate_all("anchors => anchors.map(anchor => anchor.href)")
    tensor_link = next(href for href in hrefs if href.split("?")[0].endswith("maps.safetensors"))
    assert any(href.split("?")[0].endswith("conceptattention-maps.zip") for href in hrefs)
    response = page.request.get(tensor_link)
    assert response.ok
    tensor_file = tmp_path / "downloaded.safetensors"
    tensor_file.write_bytes(response.body())
    downloaded = ConceptMaps.load(tensor_file)
    assert downloaded.concepts == tuple(concepts)
    assert "Traceback" not in page.content()


def test_bad_concepts_are_answered_in_the_page(page):
    fill_generate_form(page, "boat, sky, boat")
    page.locator("#generate-button").click()
    status = page.locator("#status")
    status.filter(has_text="appears more than once").wait_for()
    assert "Error" in status.inner_text()
    assert "'boat' appears more than once" in status.inner_text()
    assert page.locator("#heatmaps img").count() == 0
    assert "Traceback" not in page.content()


def test_explain_maps_an_uploaded_image(page, tmp_path):
    photo = tmp_path / "photo.png"
    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:24] = (90, 160, 230)
    pixels[24:] = (20, 60, 180)
    Image.fromarray(pixels).save(photo)
    page.get_by_role("tab", name="Explain an image").click()
    page.locator("#upload input[type=file]").set_input_files(str(photo))
    page.locator("#upload").get_by_text("photo.png").first.wait_for()
    page.locator("#explain-concepts").get_by_role("textbox").fill("sea, sky")
    page.locator("#explain-button").click()
    status = page.locator("#status")
    status.filter(has_text="Done").wait_for()
    assert "2 concepts" in status.inner_text()
    page.wait_for_function(
        "() => { const images = [...document.querySelectorAll('#overlays img')];"
        " return images.length === 2 && images.every(image => image.complete && image.naturalWidth > 0); }"
    )
    width, height = rendered_image_sizes(page, "#result-image img")[0]
    assert width * 48 == height * 64  # the uploaded image's aspect ratio


def test_an_error_stays_in_its_tab(page):
    """A Generate error is not left under the Explain form: switching tabs clears the status line."""
    fill_generate_form(page, "boat, sky, boat")
    page.locator("#generate-button").click()
    status = page.locator("#status")
    status.filter(has_text="appears more than once").wait_for()
    page.get_by_role("tab", name="Explain an image").click()
    page.locator("#explain-button").wait_for(state="visible")
    page.wait_for_function(
        "() => !document.querySelector('#status').innerText.includes('appears more than once')", timeout=10_000
    )
    assert "Error" not in status.inner_text()
    page.locator("#explain-button").click()  # no image uploaded: the Explain tab's own error ...
    status.filter(has_text="Upload an image first").wait_for()
    page.get_by_role("tab", name="Generate").click()  # ... is not left under the Generate form either
    page.locator("#generate-button").wait_for(state="visible")
    page.wait_for_function(
        "() => !document.querySelector('#status').innerText.includes('Upload an image first')", timeout=10_000
    )


def click_image_pixel(page, selector: str, x: int, y: int) -> None:
    """Click where pixel ``(x, y)`` of the image's natural size is drawn (the image is scaled to fit its box)."""
    page.locator(selector).scroll_into_view_if_needed()
    left, top, width, height, natural_width, natural_height = page.locator(selector).evaluate(
        "image => { const box = image.getBoundingClientRect();"
        " return [box.left, box.top, box.width, box.height, image.naturalWidth, image.naturalHeight]; }"
    )
    scale = min(width / natural_width, height / natural_height, 1)
    offset_x, offset_y = (width - natural_width * scale) / 2, (height - natural_height * scale) / 2
    page.mouse.click(left + offset_x + (x + 0.25) * scale, top + offset_y + (y + 0.25) * scale)


def read_ranking(page, previous: str = "") -> tuple[int, int, str, list[tuple[str, float]]]:
    """Wait for a new ranking under the image; return the pixel, the title and the ``(concept, score)`` entries."""
    page.wait_for_function(
        "previous => { const title = document.querySelector('#pixel-ranking .ranking-title');"
        " return title !== null && title.innerText !== previous; }",
        arg=previous,
    )
    title = page.locator("#pixel-ranking .ranking-title").inner_text()
    match = re.search(r"pixel \((\d+), (\d+)\)", title)
    assert match, title
    names = page.locator("#pixel-ranking .ranked-concept .concept").all_inner_texts()
    scores = [float(text) for text in page.locator("#pixel-ranking .ranked-concept .score").all_inner_texts()]
    return int(match[1]), int(match[2]), title, list(zip(names, scores))


def test_clicking_the_image_ranks_the_concepts_and_the_slider_shows_each_step(page, tmp_path):
    concepts = ["boat", "sun", "sea", "sky"]
    fill_generate_form(page, ", ".join(concepts))
    page.locator("#generate-button").click()
    page.locator("#status").filter(has_text="Done").wait_for()
    image = "#result-image img"
    page.wait_for_function(
        "selector => { const image = document.querySelector(selector);"
        " return image !== null && image.complete && image.naturalWidth > 0; }",
        arg=image,
    )
    natural_width, natural_height = rendered_image_sizes(page, image)[0]
    links = page.locator("#downloads a")
    links.first.wait_for()
    hrefs = links.evaluate_all("anchors => anchors.map(anchor => anchor.href)")
    tensor_file = tmp_path / "maps.safetensors"
    tensor_file.write_bytes(page.request.get(next(h for h in hrefs if h.split("?")[0].endswith(".safetensors"))).body())
    maps = ConceptMaps.load(tensor_file)
    labels = maps.segmentation(size=(natural_height, natural_width))[0]  # [H, W] argmax of the saved maps

    title = ""
    for wanted_x, wanted_y in ((60, 60), (190, 330), (300, 200)):
        click_image_pixel(page, image, wanted_x, wanted_y)
        x, y, title, ranking = read_ranking(page, title)
        assert abs(x - wanted_x) <= 1 and abs(y - wanted_y) <= 1
        assert ranking[0][0] == maps.concepts[int(labels[y, x])]  # first entry: the argmax at that pixel
        assert sorted(name for name, _ in ranking) == sorted(concepts)
        assert [score for _, score in ranking] == sorted((score for _, score in ranking), reverse=True)

    page.locator("#shown-maps").get_by_text("one step").click()
    caption = page.locator("#shown-caption")
    caption.filter(has_text="step 0 (1 of 6)").wait_for()
    before = page.locator("#overlays img").first.get_attribute("src")
    page.locator("#timeline-index input[type=range]").fill("5")
    caption.filter(has_text="step 5 (6 of 6)").wait_for()
    page.wait_for_function(
        "before => { const image = document.querySelector('#overlays img');"
        " return image !== null && image.getAttribute('src') !== before && image.complete; }",
        arg=before,
    )
    click_image_pixel(page, image, 100, 100)
    _, _, title, ranking = read_ranking(page, "")
    assert "step 5" in title and len(ranking) == 4
    assert "Traceback" not in page.content()
