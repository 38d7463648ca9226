"""The Gradio page of the web app: two tabs (generate, explain an image), shared method settings and results.

Gradio is imported inside the functions, so ``import conceptattention.app`` works without the ``app`` extra.
Both buttons share one queue slot (``concurrency_id="model"``, limit 1): requests run one after another, so two
users never swap the pipeline's attention processors under each other.
"""

from __future__ import annotations

import html
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import SPACES
from ..extras import MissingExtraError, require
from .service import USER_ERRORS, MapResult, MapService, MapView, Outcome, run_safely


if TYPE_CHECKING:
    import gradio


__all__ = [
    "GradioMissingError",
    "build_app",
    "import_gradio",
    "launch_app",
    "outcome_to_outputs",
    "ranking_html",
    "view_to_outputs",
]

#: Element ids of the page, for tests and custom CSS.
ELEMENT_IDS = {
    "prompt": "prompt",
    "generate_concepts": "generate-concepts",
    "seed": "seed",
    "steps": "steps",
    "height": "height",
    "width": "width",
    "generate_button": "generate-button",
    "prompt_words": "prompt-words",
    "upload": "upload",
    "explain_concepts": "explain-concepts",
    "explain_button": "explain-button",
    "layers": "layers",
    "status": "status",
    "image": "result-image",
    "segmentation": "segmentation",
    "legend": "legend",
    "heatmaps": "heatmaps",
    "overlays": "overlays",
    "downloads": "downloads",
    "keep_timeline": "keep-timeline",
    "shown_maps": "shown-maps",
    "timeline_index": "timeline-index",
    "shown_caption": "shown-caption",
    "ranking": "pixel-ranking",
}

#: Choices of the "Maps shown" control: label and value (values as in :data:`service.SHOWN_MAPS`).
SHOWN_MAPS_CHOICES = [("the result (mean)", "mean"), ("one step", "steps"), ("one block", "blocks")]

#: Shown under the image before a pixel is clicked.
RANKING_HINT = "Click the image to rank the concepts at that pixel."

#: Browser-side handler of a tab switch: the new value of the status line (empty).
CLEAR_STATUS_JS = "() => ''"

#: The queue slot shared by every event that runs the model.
CONCURRENCY_ID = "model"

_SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web fonts: the page makes no outside requests


class GradioMissingError(MissingExtraError):
    """Gradio (the ``app`` extra) is not installed."""


def import_gradio() -> Any:
    """Import Gradio with its usage analytics off, or explain how to install it.

    Raises:
        GradioMissingError: Gradio is not installed.

    Example:
        >>> import_gradio().__name__
        'gradio'
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        return require("gradio", "app", purpose="The web app")
    except MissingExtraError as error:
        raise GradioMissingError(str(error), name="gradio") from None


def legend_html(legend: list[tuple[str, tuple[int, int, int]]]) -> str:
    """The segmentation legend as HTML swatches (concept names escaped).

    Example:
        >>> legend_html([("<b>", (255, 0, 0))]).count("&lt;b&gt;")
        1
    """
    items = []
    for concept, (red, green, blue) in legend:
        swatch = (
            f'<span style="display:inline-block;width:1em;height:1em;margin-right:0.3em;vertical-align:middle;'
            f'background:rgb({red},{green},{blue});border:1px solid #0004"></span>'
        )
        items.append(f'<span class="legend-item" style="margin-right:1em">{swatch}{html.escape(concept)}</span>')
    return f'<div class="concept-legend">{"".join(items)}</div>'


def ranking_html(ranking: list[tuple[str, float]], x: int, y: int, caption: str = "") -> str:
    """The concepts ranked at a pixel as an ordered list (names escaped), highest first.

    Example:
        >>> html_text = ranking_html([("sea", 0.7), ("<b>", 0.3)], 4, 5)
        >>> "pixel (4, 5)" in html_text, html_text.count("<li")
        (True, 2)
    """
    where = f" &middot; {html.escape(caption)}" if caption else ""
    items = "".join(
        f'<li class="ranked-concept"><span class="concept">{html.escape(concept)}</span> '
        f'<span class="score">{score:.4f}</span></li>'
        for concept, score in ranking
    )
    return f'<div class="ranking-title">Concepts at pixel ({x}, {y}){where}:</div><ol class="ranking">{items}</ol>'


def view_to_outputs(view: MapView) -> tuple[Any, ...]:
    """The values of the components a step/block view changes: ``(heatmaps, overlays, segmentation, caption)``."""
    return (view.heatmaps, view.overlays, view.segmentation, f"Showing {view.caption}.")


def outcome_to_outputs(outcome: Outcome) -> tuple[Any, ...]:
    """The values of the page's output components for an outcome, in :func:`build_app`'s output order.

    On failure every result component is cleared, so a stale result never sits under an error message.

    Returns:
        ``(status, image, segmentation, legend, heatmaps, overlays, downloads)``.
    """
    result = outcome.result
    if result is None:
        return outcome.status, None, None, "", [], [], None
    views = result.views
    return (
        outcome.status,
        str(views["image"]),
        str(views["segmentation"]),
        legend_html(result.legend),
        [(str(path), concept) for path, concept in zip(views["heatmaps"], result.maps.concepts)],
        [(str(path), concept) for path, concept in zip(views["overlays"], result.maps.concepts)],
        [str(path) for path in result.files],
    )


def _vocabulary_markdown(service: MapService) -> str:
    if service.vocabulary is None:
        return ""
    return f"The shipped toy model knows only these words: {', '.join(service.vocabulary)}."


def build_app(service: MapService) -> gradio.Blocks:
    """Build the page (not yet queued or launched; :func:`launch_app` does both).

    Args:
        service: The model behind the page.

    Returns:
        A ``gradio.Blocks`` whose two model events share the queue slot :data:`CONCURRENCY_ID`.

    Raises:
        GradioMissingError: Gradio is not installed.

    Example:
        >>> from conceptattention.models import load_model
        >>> demo = build_app(MapService(load_model()))
        >>> type(demo).__name__
        'Blocks'
    """
    gr = import_gradio()
    ids = ELEMENT_IDS
    height, width = service.default_side
    multiple = service.size_multiple
    layer_choices = [(str(index), index) for index in range(service.layer_count)]
    default_concepts = ", ".join(service.defaults.get("concepts") or [])

    def respond(request: Callable[[], MapResult]) -> tuple[Any, ...]:
        """Run one model request; an error also pops up as a warning. Returns the output components' values."""
        outcome = run_safely(request)
        if outcome.error is not None:
            gr.Warning(html.escape(outcome.error))
        return outcome_to_outputs(outcome) + timeline_outputs(outcome)

    def on_generate(
        prompt: str,
        concepts: str,
        seed: Any,
        steps: Any,
        image_height: Any,
        image_width: Any,
        guidance_scale: Any,
        frame_count: Any,
        prompt_words: Any,
        layers: Any,
        space: Any,
        softmax: Any,
        keep_timeline: Any,
    ) -> tuple[Any, ...]:
        return respond(
            lambda: service.generate(
                prompt=prompt,
                concepts=concepts,
                seed=seed,
                steps=steps,
                height=image_height,
                width=image_width,
                guidance_scale=guidance_scale,
                frames=frame_count,
                layers=layers,
                space=space,
                softmax=softmax,
                timeline=keep_timeline,
                prompt_words=prompt_words,
            )
        )

    def on_explain(
        image_path: Any,
        concepts: str,
        caption: str,
        noise_level: Any,
        samples: Any,
        seed: Any,
        layers: Any,
        space: Any,
        softmax: Any,
        keep_timeline: Any,
    ) -> tuple[Any, ...]:
        return respond(
            lambda: service.explain(
                image_path=image_path,
                concepts=concepts,
                caption=caption,
                noise_level=noise_level,
                samples=samples,
                seed=seed,
                layers=layers,
                space=space,
                softmax=softmax,
                timeline=keep_timeline,
            )
        )

    def timeline_outputs(outcome: Outcome) -> tuple[Any, ...]:
        """``(run id, maps-shown control, step/block slider, caption, ranking)`` after a request."""
        result = outcome.result
        kept = result is not None and bool(result.timeline)
        return (
            result.run_id if result is not None else None,
            gr.Radio(value="mean", visible=kept),
            gr.Slider(value=0, minimum=0, maximum=1, visible=False),
            "",
            RANKING_HINT if result is not None else "",
        )

    def on_shown_maps(run_id: Any, over: Any) -> tuple[Any, ...]:
        """The maps-shown control changed: resize the slider to the steps or blocks, show their first one."""
        outcome = run_safely(lambda: service.result(run_id))
        if outcome.result is None:
            return (gr.Slider(visible=False), *(gr.skip(),) * 3, outcome.status, "")
        count = len(outcome.result.timeline.get(over, [])) if over != "mean" else 0
        slider = gr.Slider(
            value=0,
            minimum=0,
            maximum=max(count - 1, 1),
            step=1,
            label="Step" if over == "steps" else "Block",
            visible=count > 1,
        )
        return (slider, *show_view(run_id, over, 0))

    def show_view(run_id: Any, over: Any, index: Any) -> tuple[Any, ...]:
        """``(heatmaps, overlays, segmentation, caption, ranking)`` of one step or block (or of the result)."""
        try:
            view = service.view(run_id, over, index)
        except USER_ERRORS as error:
            return (*(gr.skip(),) * 3, f"**Error:** {html.escape(str(error))}", "")
        return (*view_to_outputs(view), RANKING_HINT)

    def on_index(run_id: Any, over: Any, index: Any) -> tuple[Any, ...]:
        if over == "mean":
            return (*(gr.skip(),) * 4, gr.skip())
        return show_view(run_id, over, index)

    def on_select(run_id: Any, over: Any, index: Any, event: gradio.SelectData) -> str:
        """A click on the image: rank the concepts of the maps shown at that pixel."""
        if not isinstance(event.index, list | tuple) or len(event.index) != 2:
            return RANKING_HINT
        x, y = event.index
        try:
            _, caption = service.shown_maps(run_id, over, index)
            ranking = service.rank_at(run_id, x, y, over, index)
        except USER_ERRORS as error:
            return f"<b>Error:</b> {html.escape(str(error))}"
        return ranking_html(ranking, int(x), int(y), caption)

    # Gradio hands the click to the parameter annotated SelectData; with postponed annotations it sees a string.
    on_select.__annotations__["event"] = gr.SelectData

    limits = service.limits
    with gr.Blocks(title="ConceptAttention", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# ConceptAttention\nConcept saliency maps from the attention layers of a diffusion transformer "
            f"(Helbling et al., ICML 2025). Model: **{html.escape(service.loaded.description)}**."
        )
        if service.loaded.notice:
            gr.Markdown(f"> {html.escape(service.loaded.notice)}")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate") as generate_tab:
                prompt = gr.Textbox(
                    label="Prompt", value=service.defaults.get("prompt") or "", max_lines=4, elem_id=ids["prompt"]
                )
                generate_concepts = gr.Textbox(
                    label="Concepts (separated by commas)",
                    value=default_concepts,
                    placeholder="dog, grass, sky",
                    info=_vocabulary_markdown(service) or None,
                    elem_id=ids["generate_concepts"],
                )
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id=ids["seed"])
                    steps = gr.Number(label="Steps", value=service.default_steps, precision=0, elem_id=ids["steps"])
                    image_height = gr.Number(
                        label=f"Height (multiple of {multiple})", value=height, precision=0, elem_id=ids["height"]
                    )
                    image_width = gr.Number(
                        label=f"Width (multiple of {multiple})", value=width, precision=0, elem_id=ids["width"]
                    )
                    guidance_scale = gr.Number(label="Guidance scale", value=service.default_guidance_scale)
                    frames = gr.Number(
                        label="Frames", value=service.defaults.get("num_frames"), precision=0, visible=service.is_video
                    )
                prompt_words = gr.Checkbox(
                    value=False,
                    label="Also map every word of the prompt (the concept box may then be empty)",
                    visible=service.offers_prompt_words,
                    elem_id=ids["prompt_words"],
                )
                generate_button = gr.Button("Generate", variant="primary", elem_id=ids["generate_button"])
            with gr.Tab("Explain an image", id="explain") as explain_tab:
                upload = gr.File(
                    label=(
                        f"Image (PNG, JPEG, WebP, TIFF, BMP; at most {limits.max_upload_bytes / 2**20:.0f} MB and "
                        f"{limits.max_pixels / 1e6:.0f} megapixels)"
                    ),
                    file_types=["image"],
                    type="filepath",
                    elem_id=ids["upload"],
                )
                explain_concepts = gr.Textbox(
                    label="Concepts (separated by commas)",
                    value=default_concepts,
                    placeholder="cat, sofa, floor",
                    info=_vocabulary_markdown(service) or None,
                    elem_id=ids["explain_concepts"],
                )
                caption = gr.Textbox(label="Caption (optional)", value="", placeholder="a cat on a sofa")
                with gr.Row():
                    noise_level = gr.Slider(
                        label="Noise level (rectified-flow time)", minimum=0.05, maximum=1.0, step=0.05, value=0.5
                    )
                    samples = gr.Slider(
                        label="Noise samples averaged", minimum=1, maximum=limits.max_samples, step=1, value=4
                    )
                    explain_seed = gr.Number(label="Seed", value=0, precision=0)
                explain_button = gr.Button("Explain", variant="primary", elem_id=ids["explain_button"])
        with gr.Accordion("Method settings", open=False):
            layers = gr.CheckboxGroup(
                choices=layer_choices,
                value=list(service.default_layers),
                label="Layers: joint blocks whose maps are averaged (default: the last four)",
                elem_id=ids["layers"],
            )
            with gr.Row():
                space = gr.Radio(
                    choices=list(SPACES),
                    value="output",
                    label="Space ('output' is the method; the others are the paper's baselines)",
                )
                softmax = gr.Checkbox(value=True, label="Softmax over concepts")
                keep_timeline = gr.Checkbox(
                    value=True,
                    label="Keep the maps of each step and block (a slider then shows them)",
                    elem_id=ids["keep_timeline"],
                )
        status = gr.Markdown(elem_id=ids["status"])
        run_id = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Image (click a pixel to rank the concepts there)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id=ids["image"],
                )
                ranking = gr.HTML(elem_id=ids["ranking"])
            with gr.Column():
                segmentation = gr.Image(
                    label="Segmentation (argmax over concepts)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id=ids["segmentation"],
                )
                legend = gr.HTML(elem_id=ids["legend"])
                shown_maps = gr.Radio(
                    choices=SHOWN_MAPS_CHOICES,
                    value="mean",
                    label="Maps shown",
                    visible=False,
                    elem_id=ids["shown_maps"],
                )
                timeline_index = gr.Slider(
                    minimum=0, maximum=1, step=1, value=0, label="Step", visible=False, elem_id=ids["timeline_index"]
                )
                shown_caption = gr.Markdown(elem_id=ids["shown_caption"])
        heatmaps = gr.Gallery(label="Heatmaps", columns=4, format="png", elem_id=ids["heatmaps"])
        overlays = gr.Gallery(label="Overlays", columns=4, format="png", elem_id=ids["overlays"])
        downloads = gr.File(
            label="Downloads: PNGs (zip) and the raw maps (.safetensors, read with ConceptMaps.load)",
            file_count="multiple",
            interactive=False,
            elem_id=ids["downloads"],
        )

        outputs = [status, image, segmentation, legend, heatmaps, overlays, downloads]
        outputs += [run_id, shown_maps, timeline_index, shown_caption, ranking]
        method_inputs = [layers, space, softmax, keep_timeline]
        generate_inputs = [prompt, generate_concepts, seed, steps, image_height, image_width, guidance_scale, frames]
        generate_inputs.append(prompt_words)  # on_generate's parameters, in order
        explain_inputs = [upload, explain_concepts, caption, noise_level, samples, explain_seed]
        for triggers, handler, inputs, api_name in (
            (
                [generate_button.click, prompt.submit, generate_concepts.submit],
                on_generate,
                generate_inputs,
                "generate",
            ),
            ([explain_button.click, explain_concepts.submit], on_explain, explain_inputs, "explain"),
        ):
            gr.on(
                triggers=triggers,
                fn=handler,
                inputs=inputs + method_inputs,
                outputs=outputs,
                api_name=api_name,
                concurrency_id=CONCURRENCY_ID,
                concurrency_limit=1,
            )
        # The status line speaks of the last request of the tab on show: switching tabs clears it (in the browser,
        # no server round trip), so one tab's error never sits under the other tab's form.
        view_outputs = [heatmaps, overlays, segmentation, shown_caption, ranking]
        shown_maps.input(on_shown_maps, [run_id, shown_maps], [timeline_index, *view_outputs], api_visibility="private")
        timeline_index.input(on_index, [run_id, shown_maps, timeline_index], view_outputs, api_visibility="private")
        image.select(on_select, [run_id, shown_maps, timeline_index], [ranking], api_visibility="private")
        for tab in (generate_tab, explain_tab):
            tab.select(fn=None, inputs=None, outputs=[status], js=CLEAR_STATUS_JS, queue=False, api_visibility="private")
    return demo


def launch_app(
    service: MapService,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    max_queue: int = 32,
) -> gradio.Blocks:
    """Build, queue and serve the page.

    Args:
        service: The model behind the page.
        host: Address to bind; ``"127.0.0.1"`` serves this machine only, ``"0.0.0.0"`` every network interface.
        port: TCP port.
        share: Ask Gradio for a public ``*.gradio.live`` link (needs internet access).
        prevent_thread_lock: Return right after the server starts (tests); else block until interrupted.
        quiet: Do not print the URL.
        max_queue: Most requests waiting at once; more are turned away with a "queue is full" message.

    Returns:
        The running ``gradio.Blocks`` (call ``.close()`` to stop it).

    Raises:
        GradioMissingError: Gradio is not installed.
        OSError: The port is taken.

    Example:
        >>> from conceptattention.models import load_model
        >>> demo = launch_app(MapService(load_model()), port=7861, prevent_thread_lock=True, quiet=True)
        >>> demo.close()
        Closing server running on port: 7861
    """
    gr = import_gradio()
    demo = build_app(service)
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    theme = gr.themes.Default(font=_SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"])
    optional: dict[str, Any] = {}
    if "run_history" in inspect.signature(demo.launch).parameters:
        optional["run_history"] = False  # Gradio >= 6.x offers to sync runs to a hub bucket; a local demo keeps none
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        show_error=False,
        max_file_size=service.limits.max_upload_bytes,
        allowed_paths=[str(service.work_dir)],
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        **optional,
    )
    return demo
