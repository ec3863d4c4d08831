"""The VideoLLM network, its tokenizer, presets and batched captioning (DESIGN §4)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.components.adatailr import tailr_loss
from lightning_modules.components.language_model import load_causal_lm, tiny_llama
from lightning_modules.components.presets import build_video_llm
from lightning_modules.components.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config
from lightning_modules.components.video_llm import IGNORE_INDEX, build_batch, prompt_words

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
ASRS = ["hello everyone", "welcome back to my channel today we cook", "so", "hello hello everyone welcome"]
WORLD_TEXT = [f"the square moves {d}" for d in DIRECTIONS] + ASRS


def moving_square(direction: str, g: torch.Generator, frames: int = 8, size: int = 32, side: int = 6) -> torch.Tensor:
    """A bright square crossing a dark noisy frame in ``direction``: ``[T, 3, H, W]`` in [-1, 1]."""
    dy, dx = DIRECTIONS[direction]
    free = lambda: int(torch.randint(side, size - 2 * side, (1,), generator=g))  # noqa: E731
    y0 = free() if dy == 0 else (size - side - 1 if dy < 0 else 1)
    x0 = free() if dx == 0 else (size - side - 1 if dx < 0 else 1)
    video = -1.0 + 0.1 * torch.randn(frames, 3, size, size, generator=g)
    for t in range(frames):
        y, x = y0 + 2 * dy * t, x0 + 2 * dx * t
        video[t, :, y : y + side, x : x + side] = 1.0
    return video


def tiny_model(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_video_llm("tiny", tokenizer_texts=WORLD_TEXT, **kwargs)


@pytest.fixture(scope="module")
def trained():
    """A tiny VideoLLM over-fitted on 8 clips whose caption names the square's direction.

    Every clip has the same transcript, so only the video can tell the captions apart.
    Trains until greedy decoding reproduces every caption (checked every 20 steps, at most 240).
    """
    g = torch.Generator().manual_seed(0)
    names = list(DIRECTIONS) * 2
    videos = torch.stack([moving_square(d, g) for d in names])
    captions = [f"the square moves {d}" for d in names]
    asrs = ["hello everyone"] * len(names)
    model = tiny_model(seed=0)
    batch = model.build_batch(asrs, captions)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    first_loss, steps, fitted = None, 0, False
    while steps < 240 and not fitted:
        model.train()
        for _ in range(20):
            out = model(videos, **batch)
            loss = tailr_loss(out.logits, out.labels, 0.0)
            first_loss = loss.item() if first_loss is None else first_loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
        fitted = model.generate(videos, asrs, max_new_tokens=8) == captions
    model.eval()
    return dict(model=model, videos=videos, captions=captions, asrs=asrs, first_loss=first_loss,
                last_loss=loss.item(), steps=steps)


# ------------------------------------------------------------------------------- shapes, labels


def test_shapes_and_visual_tokens():
    model = tiny_model()
    assert model.num_visual_tokens == 1 + 4 * 4 * 4  # CLS + 4 time steps × the full 4×4 grid
    video = torch.randn(3, 8, 3, 32, 32)
    tokens = model.video_encoder(video)
    assert tokens.shape == (3, 65, 64)
    assert model.encode_video(video).shape == (3, 65, model.language_model.config.hidden_size)
    batch = model.build_batch(ASRS[:3], ["the square moves left", "the square moves up", ""])
    length = batch["input_ids"].shape[1]
    assert all(v.shape == (3, length) for v in batch.values())
    out = model(video, **batch)
    vocab = model.language_model.config.vocab_size
    assert out.logits.shape[0] == 3 and out.logits.shape[2] == vocab
    assert out.logits.shape[:2] == out.labels.shape
    assert torch.isfinite(out.logits).all()
    # without labels: logits for every position
    assert model(video, batch["input_ids"], batch["attention_mask"]).logits.shape == (3, length, vocab)
    with pytest.raises(ValueError, match="frames"):
        model.video_encoder(torch.randn(1, 4, 3, 32, 32))


def test_labels_mask_everything_but_caption_and_eos():
    model = tiny_model()
    tok = model.tokenizer
    captions = ["the square moves left", "the square moves down"]
    for side in ("right", "left"):
        batch = model.build_batch(ASRS[:2], captions, padding_side=side)
        ids, labels, vis, mask = batch["input_ids"], batch["labels"], batch["visual_mask"], batch["attention_mask"]
        assert (labels[vis] == IGNORE_INDEX).all() and vis.sum(1).tolist() == [65, 65]
        assert (labels[mask == 0] == IGNORE_INDEX).all()
        for i, caption in enumerate(captions):
            supervised = labels[i][labels[i] != IGNORE_INDEX].tolist()
            assert supervised == tok(" " + caption, add_special_tokens=False).input_ids + [tok.eos_token_id]
            # the supervised span is the end of the row: it follows the prompt, eos last
            real = ids[i][mask[i] == 1].tolist()
            assert real[0] == tok.bos_token_id and real[-len(supervised):] == supervised
            assert tok.decode(real[1 + 65 : len(real) - len(supervised)]).startswith("describe the video")
    right = model.build_batch(ASRS[:2], captions)
    assert (right["attention_mask"][:, 0] == 1).all()  # right padding: rows start at 0
    left = model.build_batch(ASRS[:2], padding_side="left")
    assert (left["attention_mask"][:, -1] == 1).all() and "labels" not in left


def test_tags_go_after_the_transcript_and_carry_no_label():
    tok = train_tokenizer(prompt_words() + ["red circle left"] + WORLD_TEXT)
    plain = build_batch(tok, ASRS[:2], ["the square moves up"] * 2, num_visual_tokens=3)
    tagged = build_batch(tok, ASRS[:2], ["the square moves up"] * 2, num_visual_tokens=3, tags=["red circle", ""])
    for i, extra in enumerate(("tags : red circle", "tags :")):
        real = tagged["input_ids"][i][tagged["attention_mask"][i] == 1].tolist()
        assert f"{ASRS[i]} {extra} caption : the square" in tok.decode(real)
        assert tagged["labels"][i][tagged["labels"][i] != IGNORE_INDEX].tolist() == \
            plain["labels"][i][plain["labels"][i] != IGNORE_INDEX].tolist()
    with pytest.raises(ValueError, match="2 transcripts but 1 tag lists"):
        build_batch(tok, ASRS[:2], num_visual_tokens=3, tags=["red"])


def test_asr_is_truncated():
    tok = train_tokenizer(["one two three four five six seven eight"] + WORLD_TEXT)
    long_asr = " ".join(["one two three four five six seven eight"] * 50)
    short = build_batch(tok, [long_asr], ["the square moves up"], num_visual_tokens=3, max_asr_tokens=10)
    full = build_batch(tok, [long_asr], ["the square moves up"], num_visual_tokens=3, max_asr_tokens=1000)
    assert full["input_ids"].shape[1] - short["input_ids"].shape[1] == 400 - 10
    # the caption survives truncation intact
    assert short["labels"][short["labels"] != IGNORE_INDEX].tolist() == full["labels"][full["labels"] != IGNORE_INDEX].tolist()


def test_loss_only_on_caption_tokens_and_aligned():
    model = tiny_model()
    video = torch.randn(2, 8, 3, 32, 32)
    batch = model.build_batch(ASRS[1:3], ["the square moves right", "the square moves up"])
    out = model(video, **batch)
    logits = out.logits.detach().requires_grad_(True)
    loss = tailr_loss(logits, out.labels, 0.0)
    (grad,) = torch.autograd.grad(loss, logits)
    ignored = out.labels == IGNORE_INDEX
    assert grad[ignored].abs().max() == 0 and grad[~ignored].abs().sum() > 0
    assert int((~ignored).sum()) == 2 * (len("the square moves right".split()) + 1)
    # alignment: identical to the LM's own loss, which shifts unshifted labels internally
    embeds = model.embed(video, batch["input_ids"], batch["attention_mask"], batch["visual_mask"])
    hf = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert torch.allclose(loss, hf.loss, atol=1e-5)
    # the transcript changes the prompt, not what is supervised
    other = model.build_batch(["something else entirely", "so"], ["the square moves right", "the square moves up"])
    out2 = model(video, **other)
    assert out2.labels[out2.labels != IGNORE_INDEX].tolist() == out.labels[~ignored].tolist()


def test_padding_side_does_not_change_scores():
    model = tiny_model().eval()
    video = torch.randn(3, 8, 3, 32, 32)
    captions = ["the square moves right", "the square moves up", "the square moves left"]

    def caption_logprob(side):
        out = model(video, **model.build_batch(ASRS[:3], captions, padding_side=side))
        keep = out.labels != IGNORE_INDEX
        logp = torch.log_softmax(out.logits.float(), -1).gather(-1, out.labels.clamp(min=0)[..., None])[..., 0]
        return (logp * keep).sum(1)

    with torch.no_grad():
        assert torch.allclose(caption_logprob("right"), caption_logprob("left"), atol=1e-4)


# -------------------------------------------------------------------------------- learning


def test_tiny_preset_learns_video_to_text(trained):
    """The transcript is the same for every clip, so reproducing the captions needs the video."""
    generated = trained["model"].generate(trained["videos"], trained["asrs"], max_new_tokens=8)
    assert generated == trained["captions"], f"not fitted after {trained['steps']} steps: {generated}"
    assert trained["last_loss"] < 0.1 * trained["first_loss"]
    # No check that motion (rather than where the square starts) is what it read: here the start
    # position gives the direction away. Generalising motion to unseen clips is measured by
    # experiments/adatailr_noise.py on the synthetic world.


# ------------------------------------------------------------------------------ generation


def test_batched_generation_equals_one_at_a_time(trained):
    model = trained["model"]
    videos = trained["videos"][:4]
    asrs = ASRS  # different lengths: the batch is genuinely left-padded
    for beams in (1, 3):
        batched = model.generate(videos, asrs, max_new_tokens=8, num_beams=beams)
        single = [model.generate(videos[i : i + 1], [asrs[i]], max_new_tokens=8, num_beams=beams)[0] for i in range(4)]
        assert batched == single
    # also on an untrained model (its scores are not saturated)
    fresh = tiny_model(seed=1)
    video = torch.randn(3, 8, 3, 32, 32)
    batched = fresh.generate(video, ASRS[:3], max_new_tokens=6)
    assert batched == [fresh.generate(video[i : i + 1], [ASRS[i]], max_new_tokens=6)[0] for i in range(3)]


def test_greedy_is_deterministic_and_restores_mode():
    model = tiny_model(seed=2)
    model.train()
    video = torch.randn(2, 8, 3, 32, 32)
    first = model.generate(video, ASRS[:2], max_new_tokens=6)
    assert model.training  # mode restored
    assert model.generate(video, ASRS[:2], max_new_tokens=6) == first
    sampled = [model.generate(video, ASRS[:2], max_new_tokens=6, do_sample=True, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_beam_search_returns_valid_strings(trained):
    model = trained["model"]
    out = model.generate(trained["videos"], trained["asrs"], max_new_tokens=8, num_beams=4)
    assert len(out) == len(trained["captions"]) and all(isinstance(s, str) for s in out)
    assert out == trained["captions"]  # a fitted model's beam agrees with its greedy caption
    fresh = model.generate(torch.randn(2, 8, 3, 32, 32), ASRS[:2], max_new_tokens=5, num_beams=3)
    assert len(fresh) == 2 and all(isinstance(s, str) and "<pad>" not in s and "</s>" not in s for s in fresh)


# ------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(tmp_path):
    for kind in ("word", "bpe"):
        tok = train_tokenizer([*WORLD_TEXT, "the end."] * 3, kind=kind, vocab_size=300)
        assert None not in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id)
        text = "the square moves left."
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.decode(ids).strip() == text
        assert tok("The SQUARE", add_special_tokens=False).input_ids == tok("the square", add_special_tokens=False).input_ids
        save_tokenizer(tok, tmp_path / kind)
        loaded = load_tokenizer(tmp_path / kind)
        assert loaded(text, add_special_tokens=False).input_ids == ids
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (
            tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    # unknown words map to <unk> with the word-level kind
    word = train_tokenizer(WORLD_TEXT)
    assert word("zebra", add_special_tokens=False).input_ids == [word.unk_token_id]


@pytest.mark.parametrize("missing", ["pad", "eos"])
def test_tokenizer_without_pad_or_eos_is_rejected(tmp_path, missing):
    tok = train_tokenizer(WORLD_TEXT)
    setattr(tok, f"{missing}_token", None)
    folder = tmp_path / f"no_{missing}"
    save_tokenizer(tok, folder)
    with pytest.raises(ValueError, match=f"{folder}.*no {missing}"):
        load_tokenizer(folder)
    if missing == "pad":  # an existing token can stand in for pad
        assert load_tokenizer(folder, pad_token="<unk>").pad_token_id == tok.unk_token_id
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


# --------------------------------------------------------------------------------- presets


def test_unknown_preset_is_an_error():
    with pytest.raises(ValueError, match="'huge'.*real.*smol.*tiny"):
        build_video_llm("huge")
    with pytest.raises(ValueError, match="tokenizer_texts"):
        build_video_llm("tiny")


def test_missing_checkpoint_paths_are_named(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(ValueError, match="video_encoder_path"):
        build_video_llm("real", language_model_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        build_video_llm("real", video_encoder_path=missing, language_model_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        load_causal_lm(missing)
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        VideoEncoder(checkpoint=missing)


@pytest.mark.parametrize("patch, image", [(8, 32), (4, 32), (8, 64)])
def test_conv_stem_reaches_the_patch_grid(patch, image):
    """The convolutional stem replaces the patch projection without changing the token layout."""
    config = tiny_timesformer_config(patch_size=patch, image_size=image, num_frames=4)
    linear = VideoEncoder(config=config, pool_grid=None)
    stem = VideoEncoder(config=config, pool_grid=None, conv_stem=True)
    video = torch.randn(2, 4, 3, image, image)
    assert stem(video).shape == linear(video).shape == (2, 1 + 4 * (image // patch) ** 2, 64)
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in stem.modules())


def test_conv_stem_rejects_bad_patches_and_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="power-of-two"):
        VideoEncoder(config=tiny_timesformer_config(patch_size=6, image_size=36), conv_stem=True)
    from transformers import TimesformerModel

    TimesformerModel(tiny_timesformer_config()).save_pretrained(tmp_path / "timesformer")
    with pytest.raises(ValueError, match="checkpoint keeps its own"):
        VideoEncoder(checkpoint=tmp_path / "timesformer", conv_stem=True)


@pytest.mark.parametrize("conv_stem", [False, True])
def test_frame_difference_channels_see_change_only(conv_stem):
    """The extra channels carry each frame minus the one before: a still video gives them nothing
    to see, a moving one does; the token layout is unchanged."""
    torch.manual_seed(0)
    encoder = VideoEncoder(config=tiny_timesformer_config(), frame_difference=True, conv_stem=conv_stem).eval()
    first = encoder.timesformer.embeddings.patch_embeddings.projection
    first = first[0] if conv_stem else first
    assert first.in_channels == 6
    still = torch.randn(1, 1, 3, 32, 32).expand(2, 8, 3, 32, 32)
    moving = moving_square("left", torch.Generator().manual_seed(0)).unsqueeze(0).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        before = {name: encoder(v) for name, v in (("still", still), ("moving", moving))}
        first.weight[:, 3:] = 0.0  # blind the difference channels
        after = {name: encoder(v) for name, v in (("still", still), ("moving", moving))}
    assert before["still"].shape == (2, 65, 64)
    torch.testing.assert_close(before["still"], after["still"])
    assert not torch.allclose(before["moving"], after["moving"], atol=1e-3)
    with pytest.raises(ValueError, match="checkpoint keeps its own"):
        VideoEncoder(checkpoint="unused", frame_difference=True)


def test_real_preset_from_local_checkpoints(tmp_path):
    """The `real` path (local TimeSformer + local causal LM + its tokenizer, bf16) on tiny stand-ins."""
    torch.manual_seed(0)
    tok = train_tokenizer(WORLD_TEXT)
    from transformers import TimesformerModel

    TimesformerModel(tiny_timesformer_config()).save_pretrained(tmp_path / "timesformer")
    lm = tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    lm.save_pretrained(tmp_path / "lm")
    save_tokenizer(tok, tmp_path / "lm")
    model = build_video_llm(
        "real", video_encoder_path=tmp_path / "timesformer", language_model_path=tmp_path / "lm", pool_grid=(2, 2, 2)
    )
    assert model.num_visual_tokens == 9
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    captions = model.generate(torch.randn(2, 8, 3, 32, 32), ASRS[:2], max_new_tokens=4)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


@pytest.mark.slow
def test_smol_preset_loads_smollm2_and_generates():
    """SmolLM2-135M-Instruct from the packaged GGUF (converted once, then cached)."""
    pytest.importorskip("gguf")
    model = build_video_llm("smol")
    assert model.language_model.config.hidden_size == 576
    assert model.tokenizer.eos_token_id is not None and model.tokenizer.pad_token_id is not None
    video = torch.randn(2, 8, 3, 32, 32)
    batch = model.build_batch(ASRS[:2], ["a red square moves left", "a blue circle grows"])
    out = model(video, **batch)
    assert torch.isfinite(tailr_loss(out.logits, out.labels, 0.0))
    captions = model.generate(video, ASRS[:2], max_new_tokens=8, min_new_tokens=4)
    assert len(captions) == 2 and any(c.strip() for c in captions)
