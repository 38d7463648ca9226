"""Prompt-word maps (``concepts="prompt"`` / ``prompt_words=True``) on a tiny FLUX.1 pipeline.

The naive reference takes the raw text-token and image-token tensors of each double block through plain forward
hooks (the text attention output entering ``to_add_out``, the image one entering ``to_out[0]``, the projections and
QK-norms, the RoPE tables from ``pos_embed``), groups the tokens into words from the tokenizer's own pieces (a new
word starts at a ``▁`` piece; ``</s>`` and ``<pad>`` left out), and computes every score in float64 with explicit
loops: word score = mean of its tokens' scores, softmax over words per (step, layer), then mean.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from conceptattention import ConceptAttention, ConceptMaps, explain
from conceptattention.cli.main import main
from conceptattention.encoding import ConceptError, prompt_words
from conceptattention.testing import tiny_flux_pipeline


PROMPT = "a red car, on sand"
CALL = {"height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 32, "output_type": "pt"}


@pytest.fixture(scope="module")
def pipe():
    pipeline = tiny_flux_pipeline(num_layers=3)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(pipe, prompt=PROMPT, **call):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **{**CALL, **call}).images


def naive_words(tokenizer, prompt: str, max_length: int) -> list[list[int]]:
    """Token positions of each word, from the tokenizer's pieces (``▁`` starts a word), specials and padding out."""
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    )
    words: list[list[int]] = []
    for position, piece in enumerate(pieces):
        if piece in (tokenizer.eos_token, tokenizer.pad_token):
            continue
        if piece.startswith("▁") or not words:
            words.append([])
        words[-1].append(position)
    return words


class RawCapture:
    """Forward hooks on the double blocks: per transformer call, each block's raw tensors."""

    def __init__(self, transformer):
        self.calls: list[dict] = []
        self.handles = []
        self.handles.append(transformer.register_forward_pre_hook(lambda *_: self.calls.append({"blocks": {}})))
        self.handles.append(transformer.pos_embed.register_forward_hook(self._rope))
        for index, block in enumerate(transformer.transformer_blocks):
            attn = block.attn
            for name, module, take_input in (
                ("o_txt", attn.to_add_out, True),
                ("o_img", attn.to_out[0], True),
                ("k_txt", attn.norm_added_k, False),
                ("v_txt", attn.add_v_proj, False),
                ("q_img", attn.norm_q, False),
                ("v_img", attn.to_v, False),
            ):
                self.handles.append(module.register_forward_hook(self._keep(index, name, take_input)))

    def _rope(self, module, args, output):
        self.calls[-1]["rope"] = tuple(t.detach().double() for t in output)

    def _keep(self, index, name, take_input):
        def hook(module, args, output):
            tensor = args[0] if take_input else output
            self.calls[-1]["blocks"].setdefault(index, {})[name] = tensor.detach().double().clone()

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def naive_word_maps(calls, words, layers, space, heads=None, num_text=32):
    """``[W, I]`` maps: per (call, layer) word scores = mean of token scores, softmax over words, mean."""
    maps = []
    for call in calls:
        cos, sin = call["rope"]
        for layer in layers:
            raw = call["blocks"][layer]
            num_heads = raw["k_txt"].shape[2]
            if space == "output":
                o_txt = raw["o_txt"][0].unflatten(-1, (num_heads, -1))  # [T, H, D]
                o_img = raw["o_img"][0].unflatten(-1, (num_heads, -1))  # [I, H, D]
                per_head = [num_heads * o_txt[:, h] @ o_img[:, h].T for h in range(num_heads)]  # H x [T, I]
            elif space == "value":
                v_txt = raw["v_txt"][0].unflatten(-1, (num_heads, -1))
                v_img = raw["v_img"][0].unflatten(-1, (num_heads, -1))
                per_head = [v_txt[:, h] @ v_img[:, h].T for h in range(num_heads)]
            else:  # cross_attention: RoPE'd image queries . RoPE'd text keys, / sqrt(D)
                k_txt = apply_rotary_emb(raw["k_txt"], (cos[:num_text], sin[:num_text]), sequence_dim=1)[0]
                q_img = apply_rotary_emb(raw["q_img"], (cos[num_text:], sin[num_text:]), sequence_dim=1)[0]
                scale = 1 / math.sqrt(k_txt.shape[-1])
                per_head = [scale * k_txt[:, h] @ q_img[:, h].T for h in range(num_heads)]
            chosen = range(num_heads) if heads is None else heads
            token_scores = sum(per_head[h] for h in chosen) / len(chosen)  # [T, I]
            word_scores = torch.stack([token_scores[tokens].mean(0) for tokens in words])  # [W, I]
            maps.append(word_scores.softmax(dim=0))
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("space", ["output", "value", "cross_attention"])
def test_word_maps_match_naive_float64_reference(pipe, space):
    capture = RawCapture(pipe.transformer)
    try:
        with ConceptAttention(pipe, "prompt", layers=[0, 2], space=space) as attention:
            generate(pipe)
    finally:
        capture.remove()
    maps = attention.maps
    words = naive_words(pipe.tokenizer_2, PROMPT, 32)
    assert maps.concepts == ("a", "red", "car,", "on", "sand")
    expected = naive_word_maps(capture.calls, words, [0, 2], space)  # [W, I]
    torch.testing.assert_close(maps.tensor.flatten(1).double(), expected, atol=2e-5, rtol=1e-4)


def test_sub_word_tokens_are_pooled_by_word_ids(pipe):
    split = prompt_words(pipe.tokenizer_2, PROMPT, 32)
    groups = naive_words(pipe.tokenizer_2, PROMPT, 32)
    assert split.words == ("a", "red", "car,", "on", "sand")
    assert [split.token_index[split.word_of_token == w].tolist() for w in range(5)] == groups
    assert max(len(group) for group in groups) > 1  # the tiny T5 splits "red", "car," and "sand" into pieces


def test_special_tokens_and_padding_are_excluded(pipe):
    tokenizer = pipe.tokenizer_2
    ids = tokenizer(PROMPT, padding="max_length", max_length=32, truncation=True)["input_ids"]
    split = prompt_words(tokenizer, PROMPT, 32)
    kept = [ids[i] for i in split.token_index.tolist()]
    assert tokenizer.eos_token_id not in kept and tokenizer.pad_token_id not in kept
    assert split.token_index.tolist() == list(range(len(split.token_index)))  # the content tokens, in order
    # truncation at 6 tokens: 5 content tokens and </s>; "car," is cut to its first piece, labelled as seen
    short = prompt_words(tokenizer, PROMPT, 6)
    assert short.token_index.tolist() == [0, 1, 2, 3, 4] and short.word_of_token.tolist() == [0, 1, 1, 1, 2]
    assert short.words == ("a", "red", "c")


def test_output_is_bit_identical_and_state_restored(pipe):
    reference = generate(pipe)
    with ConceptAttention(pipe, ["sky"], prompt_words=True):
        assert "encode_prompt" in vars(pipe)
        images = generate(pipe)
    assert torch.equal(reference, images)
    assert "encode_prompt" not in vars(pipe)


def test_combined_with_concepts(pipe):
    with ConceptAttention(pipe, ["sky", "Car,"], prompt_words=True, layers=[1, 2]) as both:
        generate(pipe)
    with ConceptAttention(pipe, ["sky", "Car,"], layers=[1, 2]) as concepts_only:
        generate(pipe)
    with ConceptAttention(pipe, "prompt", layers=[1, 2]) as words_only:
        generate(pipe)
    maps = both.maps
    assert maps.concepts == ("sky", "Car,", "a", "red", "car,#2", "on", "sand")
    # raw scores are those of each part alone; the softmax runs over concepts and words together
    torch.testing.assert_close(maps.logits[:2], concepts_only.maps.logits)
    torch.testing.assert_close(maps.logits[2:], words_only.maps.logits)
    torch.testing.assert_close(maps.tensor.sum(0), torch.ones_like(maps.tensor[0]))
    assert maps.settings["prompt_words"] == ["a", "red", "car,#2", "on", "sand"]


def test_repeated_words_and_true_cfg_negative_prompt(pipe):
    with ConceptAttention(pipe, "prompt") as attention:
        pipe("a car on a car", negative_prompt="sand sand sand", true_cfg_scale=2.0, generator=torch.Generator().manual_seed(0), **CALL)
    assert attention.maps.concepts == ("a", "car", "on", "a#2", "car#2")


def test_explain_maps_caption_words(pipe):
    from PIL import Image

    maps = explain(pipe, Image.new("RGB", (32, 32), "red"), "prompt", caption="red sand", height=32, width=32)
    assert maps.concepts == ("red", "sand") and maps.tensor.shape == (2, 1, 16, 16)
    with pytest.raises(ConceptError, match="no words"):
        explain(pipe, Image.new("RGB", (32, 32)), "prompt", caption="", height=32, width=32)


class TestRefusals:
    def test_bare_transformer(self, pipe):
        with pytest.raises(ConceptError, match="bare transformer"):
            ConceptAttention(pipe.transformer, "prompt")

    def test_other_family_is_named(self):
        from conceptattention.testing import tiny_chroma_pipeline

        with pytest.raises(ConceptError, match="'chroma' family"):
            ConceptAttention(tiny_chroma_pipeline(), ["sky"], prompt_words=True)

    def test_prompt_embeds(self, pipe):
        embeds, pooled, _ = pipe.encode_prompt(PROMPT, None, max_sequence_length=32)
        with ConceptAttention(pipe, "prompt"), pytest.raises(ConceptError, match="prompt embeddings"):
            pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, **CALL)

    def test_several_prompts(self, pipe):
        with ConceptAttention(pipe, "prompt"), pytest.raises(ConceptError, match="one prompt per run"):
            pipe(["a car", "sand"], **CALL)

    def test_prompt_changed_within_block(self, pipe):
        with ConceptAttention(pipe, "prompt"), pytest.raises(ConceptError, match="prompt changed"):
            generate(pipe, "a car")
            generate(pipe, "sand")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-flux"
    tiny_flux_pipeline(num_layers=3).save_pretrained(folder)
    return folder


def test_cli_writes_one_map_per_word(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    args = ["generate", "--model", str(model_dir), "--prompt", "a red car", "--prompt-words", "--height", "32",
            "--width", "32", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["concepts"] == ["a", "red", "car"] and settings["prompt_words"] is True
    assert {p.name for p in (out / "heatmaps").iterdir()} == {"a.png", "red.png", "car.png"}
    assert ConceptMaps.load(out / "maps.safetensors").concepts == ("a", "red", "car")
    out = tmp_path / "explain"
    image = tmp_path / "image.png"
    __import__("PIL.Image").Image.new("RGB", (32, 32)).save(image)
    args = ["explain", "--model", str(model_dir), "--image", str(image), "--caption", "red car", "--prompt-words",
            "--concepts", "sky", "--samples", "1", "--height", "32", "--width", "32", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "settings.json").read_text())["concepts"] == ["sky", "red", "car"]
    assert main(args[:-2] + ["--caption", "", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_single_word_prompt_warns_and_keeps_raw_scores(pipe):
    with pytest.warns(UserWarning, match="single concept"), ConceptAttention(pipe, "prompt") as attention:
        generate(pipe, "sand")
    maps = attention.maps
    assert maps.concepts == ("sand",) and maps.settings["effective_softmax"] is False
    assert torch.equal(maps.tensor, maps.logits)
