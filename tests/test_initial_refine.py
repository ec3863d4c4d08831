"""Round 0, the initial refinement: image captioner, merge LLM, refiner, round writer (DESIGN §6).

Tiny everything: the ILM trains for a few steps on the tiny world's foundation stills and a
randomly initialised tiny Llama saved as a local HF folder stands in for the merge LLM (its
captions are mostly garbage, which exercises the sanity-check fallback). SmolLM2 runs only in
the test marked ``slow``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.annotation_writer import AnnotationWriter, caption_failure
from datamodules.annotation_sources import open_source
from datamodules.annotation_store import RoundReader, ShardWriter, read_manifest, round_dir
from datamodules.clip_datamodule import ClipCaptionDataModule
from datamodules.image_captions import ImageCaptionDataModule, read_image_captions
from lightning_modules.components.caption_merger import (
    IGNORE_INDEX,
    PROMPT_SETTINGS_FILE,
    CaptionMerger,
    clean_caption,
    load_merge_lm,
    merge_request,
)
from lightning_modules.components.frame_captioner import (
    HFImageCaptioner,
    TinyVideoLLMCaptioner,
    build_frame_captioner,
)
from lightning_modules.components.grounded_choice import farthest_grounded
from lightning_modules.components.language_model import tiny_llama
from lightning_modules.components.seeded_sampling import clip_seed
from lightning_modules.components.tag_recognition import world_tags
from lightning_modules.components.tokenizer import train_tokenizer
from lightning_modules.initial_refiner import InitialRefinerModule, uniform_frame_indices
from lightning_modules.merger_sft import MergerSFTModule
from rank_processes import rank_env
from train import cli_main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "demo"
WORDS = ("a the big small red blue green yellow circle square star cross ring triangle moves left right up down "
         "in kitchen forest beach snow city night desert underwater frames transcript caption").split()


def pool_clip_ids(world: Path) -> list[str]:
    return [r["clip_id"] for r in open_source(world / "pool")]


@pytest.fixture(scope="module")
def ilm_run(tiny_world, tmp_path_factory) -> Path:
    """A tiny single-frame ILM trained for a few steps through the real CLI (its run folder)."""
    run = tmp_path_factory.mktemp("demo_run")
    cli_main([
        "fit", "--config", str(CONFIGS / "ilm_pretrain.yaml"), "--world_dir", str(tiny_world), "--run_dir", str(run),
        "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.init_args.batch_size", "4",
    ])
    assert (run / "ilm" / "checkpoints" / "last.ckpt").is_file()
    return run


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random tiny causal LM with a word-level tokenizer, saved as a local HF folder."""
    folder = tmp_path_factory.mktemp("tiny_lm")
    tok = train_tokenizer([" ".join(WORDS), "- : ( ) ."], kind="word")
    torch.manual_seed(0)
    lm = tiny_llama(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, hidden_size=32, num_layers=2,
                    num_heads=2, intermediate_size=64)
    lm.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def refine_args(world: Path, run: Path, merger: Path, *extra: str) -> list[str]:
    return [
        "predict", "--config", str(CONFIGS / "initial_refine.yaml"), "--world_dir", str(world), "--run_dir", str(run),
        "--model.init_args.merger_path", str(merger), "--model.init_args.max_new_tokens", "8",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4",
        "--trainer.enable_progress_bar", "false", *extra,
    ]


# ------------------------------------------------------------------------------ foundation stills


def test_image_caption_batches_and_seeded_split(tiny_world, tmp_path):
    dm = ImageCaptionDataModule(str(tiny_world / "foundation"), val_fraction=0.3, batch_size=4, image_size=32,
                                tokenizer_dir=str(tmp_path / "tok"))
    dm.prepare_data()
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 1, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert batch["asr"] == [""] * 4 and len(batch["caption"]) == 4
    train_ids = {r["image"] for r in dm.train_set.rows}
    val_ids = {r["image"] for r in dm.val_set.rows}
    assert val_ids and not train_ids & val_ids
    assert len(train_ids) + len(val_ids) == len(read_image_captions(tiny_world / "foundation" / "captions.jsonl"))
    again = ImageCaptionDataModule(str(tiny_world / "foundation"), val_fraction=0.3, seed=0)
    again.setup()
    other = ImageCaptionDataModule(str(tiny_world / "foundation"), val_fraction=0.3, seed=1)
    other.setup()
    assert {r["image"] for r in again.val_set.rows} == val_ids
    assert {r["image"] for r in other.val_set.rows} != val_ids  # the seed matters


def test_image_caption_file_rejects_escaping_paths(tmp_path):
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "../secret.png", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="captions.jsonl:1"):
        read_image_captions(tmp_path / "captions.jsonl")


def test_ilm_fit_smoke_and_checkpoint_captions_frames(ilm_run, tiny_world):
    captioner = TinyVideoLLMCaptioner(ilm_run / "ilm" / "checkpoints" / "last.ckpt")
    frames = torch.randn(5, 3, 48, 48)  # another size is resized to the ILM's
    captions = captioner.caption_frames(frames)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)


def test_an_ilm_with_a_convolutional_stem_loads_as_it_was_trained(tiny_world, tmp_path):
    """The captioner rebuilds the network the checkpoint's hyper-parameters describe (it used to
    build the default patch embedding and fail on a stem's weights)."""
    cli_main(["fit", "--config", str(CONFIGS / "ilm_pretrain.yaml"), "--world_dir", str(tiny_world),
              "--run_dir", str(tmp_path), "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "4",
              "--model.init_args.conv_stem", "true"])
    checkpoint = tmp_path / "ilm" / "checkpoints" / "last.ckpt"
    captioner = TinyVideoLLMCaptioner(checkpoint)
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    stem = "net.video_encoder.timesformer.embeddings.patch_embeddings.projection.4.weight"
    assert stem in trained  # the stem's second convolution, restored exactly
    torch.testing.assert_close(captioner.net.state_dict()[stem[len("net."):]], trained[stem])
    assert len(captioner.caption_frames(torch.randn(3, 3, 32, 32))) == 3


def test_ilm_fast_dev_run(tiny_world, tmp_path):
    cli_main(["fit", "--config", str(CONFIGS / "ilm_pretrain.yaml"), "--world_dir", str(tiny_world),
              "--run_dir", str(tmp_path), "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar", "false"])
    assert (tmp_path / "ilm" / "tokenizer" / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------- merge prompt


def test_merge_request_layout():
    text = merge_request(["a red ball.", "a red ball.", " a  red ball in snow. "], "so " * 60, instruction="Merge.",
                         max_asr_words=5)
    assert text == "Merge.\nFrames:\n- a red ball.\n- a red ball in snow.\nTranscript: so so so so so"
    assert merge_request([], "", instruction="I.").endswith("Frames:\n- (no caption)\nTranscript: (none)")
    kept = merge_request(["x.", "x."], "hi", instruction="I.", dedupe_frames=False)
    assert kept.count("- x.") == 2


def test_prompt_plain_and_chat_template(tiny_lm_dir):
    lm, tok, _ = load_merge_lm(tiny_lm_dir)
    plain = CaptionMerger(lm, tok, instruction="I.")
    assert not plain.use_chat_template
    assert plain.prompt(["a red ball."], "hello") == "I.\nFrames:\n- a red ball.\nTranscript: hello\nCaption:"
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat = CaptionMerger(lm, tok, instruction="I.", system="S.")
    assert chat.use_chat_template
    expected = "<system>S.</s><user>I.\nFrames:\n- a red ball.\nTranscript: hi</s><assistant>"
    assert chat.prompt(["a red ball."], "hi") == expected


def test_sft_batch_supervises_only_target_and_eos(tiny_lm_dir):
    lm, tok, _ = load_merge_lm(tiny_lm_dir)
    merger = CaptionMerger(lm, tok, instruction="caption")
    batch = merger.sft_batch([["a red star."], ["a big blue ring.", "a blue ring."]], ["hello", "it moves left"],
                             ["a red star moves up.", "a big blue ring moves left in the snow."])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    for row in range(2):
        supervised = labels[row][labels[row] != IGNORE_INDEX]
        assert supervised[-1] == tok.eos_token_id
        text = tok.decode(supervised[:-1])
        assert text.replace(" .", ".") == ["a red star moves up.", "a big blue ring moves left in the snow."][row]
        n = int(mask[row].sum())
        assert (labels[row, n:] == IGNORE_INDEX).all() and (mask[row, :n] == 1).all()  # right padding
    assert batch["prefix_len"] > 0 and (ids[0, : batch["prefix_len"]] == ids[1, : batch["prefix_len"]]).all()
    shared = merger.target_loss(**batch)
    merger.prefix_cache = False
    full = merger.target_loss(**batch)
    assert torch.isfinite(full) and full.item() > 0
    assert torch.allclose(shared, full, atol=1e-5)  # computing the shared prefix once changes nothing


def merger_and_prompts(lm_dir: Path) -> tuple[CaptionMerger, list[str]]:
    """A merger on the tiny LM and three merge prompts of different lengths."""
    lm, tok, _ = load_merge_lm(lm_dir)
    merger = CaptionMerger(lm, tok, instruction="caption", max_new_tokens=6)
    frames = [["a red star."], ["a big blue ring in the snow.", "a blue ring."], ["a circle."]]
    asrs = ["hello", "it moves left in the kitchen right now", "up"]
    return merger, [merger.prompt(f, a) for f, a in zip(frames, asrs)]


def test_batched_generation_matches_one_at_a_time(tiny_lm_dir):
    merger, prompts = merger_and_prompts(tiny_lm_dir)
    batched = merger.generate_raw(prompts)
    single = [merger.generate_raw([p])[0] for p in prompts]
    assert batched == single
    merger.prefix_cache = False
    assert merger.generate_raw(prompts) == batched  # the shared prefix cache changes nothing


def test_repeated_prompts_are_computed_once_and_give_what_each_gives_alone(tiny_lm_dir):
    merger, prompts = merger_and_prompts(tiny_lm_dir)
    lm = merger.language_model
    rows_seen = []
    forward = lm.forward
    lm.forward = lambda *a, **kw: rows_seen.append(kw["input_ids"].shape) or forward(*a, **kw)
    for prefix_cache in (True, False):
        merger.prefix_cache = prefix_cache
        alone = merger.generate_raw(prompts)
        rows_seen.clear()
        assert merger.generate_raw(prompts * 3) == alone * 3
        # the prompts' tokens up to the last go through the LM once per distinct prompt (3 rows,
        # after a 1-row shared head), then each of the 9 rows feeds one token per step
        prompt_rows = [shape[0] for shape in rows_seen if shape[1] > 1]
        assert prompt_rows == ([1, 3] if prefix_cache else [3]), rows_seen
        assert all(shape == (9, 1) for shape in rows_seen if shape[1] == 1)
        seeds = [None] * 3 + [11, 12, 13]  # the greedy rows beside sampled copies of their prompts
        assert merger.generate_raw(prompts * 2, sample_seeds=seeds, top_p=0.9)[:3] == alone


def test_no_repeat_in_caption_bans_only_self_repeats():
    from lightning_modules.components.caption_merger import NoRepeatInCaption

    prompt = [5, 6, 7, 8]  # the prompt's 2-grams (5, 6), (6, 7)… stay allowed
    ids = torch.tensor([prompt + [1, 2, 3, 1], prompt + [9, 9, 9, 5]])
    scores = NoRepeatInCaption(n=2, prompt_length=4)(ids, torch.zeros(2, 10))
    assert scores[0, 2] == -float("inf") and torch.isfinite(scores[0, [0, 1, 3, 4]]).all()  # (1, 2) was generated
    assert torch.isfinite(scores[1]).all()  # (5, 6) is only in the prompt: copying it stays allowed


@pytest.mark.parametrize("raw, clean", [
    ("a red star moves up. Then it stops.", "A red star moves up."),
    ("<|im_start|>assistant\nCaption: \"A big blue ring in the snow\"", "A big blue ring in the snow."),
    ("\n\n  the circle rises!  \nmore text", "The circle rises."),
    ("Answer: a green cross,", "A green cross."),
    ("<|im_end|>", ""),
    ("  ...  ", ""),
    ("A red dot in the snow; a big red dot; a red dot; a big red dot", "A red dot in the snow; a big red dot."),
    ("a star; a star; a ring.", "A star."),
])
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


# ---------------------------------------------------------------------------------- sanity checks


@pytest.mark.parametrize("caption, reason", [
    ("A big red star moves left in the kitchen.", None),
    ("A small red circle moves left and a small red square moves left.", None),
    ("", "empty"),
    ("  ... ", "empty"),
    ("the red the red the red the red", "repetitive"),
    (" ".join(["word"] * 3 + [f"w{i}" for i in range(45)]), "too_long"),
    ("Красный круг движется влево.", "wrong_script"),
])
def test_caption_failure(caption, reason):
    assert caption_failure(caption) == reason


class FixedCaptions(L.LightningModule):
    """Predicts a fixed caption per clip (by position in the pool), to drive the writer alone."""

    def __init__(self, captions: dict[str, str]) -> None:
        super().__init__()
        self.captions = captions
        self.seen: list[str] = []

    def predict_step(self, batch, batch_idx):
        self.seen += batch["clip_id"]
        return [{"clip_id": c, "caption": self.captions[c]} for c in batch["clip_id"]]


def run_writer(world: Path, run: Path, captions: dict[str, str]) -> FixedCaptions:
    module = FixedCaptions(captions)
    dm = ClipCaptionDataModule(train_source=str(world / "pool"), exclude_clips=str(round_dir(run, 0)),
                               batch_size=5, num_frames=1, image_size=16)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[AnnotationWriter(str(run), round_index=0)])
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return module


def test_writer_counts_failures_and_falls_back_to_asr(tiny_world, tmp_path):
    ids = pool_clip_ids(tiny_world)
    bad = {ids[0]: "", ids[1]: "star star star star star", ids[2]: "Красный круг."}
    captions = {c: bad.get(c, f"A red star number {i}.") for i, c in enumerate(ids)}
    run_writer(tiny_world, tmp_path, captions)
    manifest = read_manifest(round_dir(tmp_path, 0))
    assert manifest["records"] == len(ids) and manifest["failures"] == 3
    assert manifest["failure_reasons_this_run"] == {"empty": 1, "repetitive": 1, "too_long": 0, "wrong_script": 1}
    pool = {r["clip_id"]: r for r in open_source(tiny_world / "pool")}
    records = {r["clip_id"]: r for r in RoundReader(round_dir(tmp_path, 0))}
    for clip_id in bad:
        assert records[clip_id]["caption"] == pool[clip_id]["asr"] and records[clip_id]["source"] == "asr_fallback"
    good = records[ids[3]]
    assert good["caption"] == "A red star number 3." and good["source"] == "initial_refiner" and good["round"] == 0
    for key in ("video_path", "start", "end", "asr"):
        assert good[key] == pool[ids[3]][key]


def test_writer_resumes_from_a_partial_shard_without_duplicates(tiny_world, tmp_path):
    ids = pool_clip_ids(tiny_world)
    captions = {c: f"A blue ring number {i}." for i, c in enumerate(ids)}
    run_writer(tiny_world, tmp_path / "full", captions)
    full = (round_dir(tmp_path / "full", 0) / "part-00000.jsonl").read_text().splitlines(keepends=True)

    # A run killed after 11 records: a .partial shard (with a torn last line), no manifest.
    killed = round_dir(tmp_path / "killed", 0)
    killed.mkdir(parents=True)
    (killed / "part-00000.jsonl.partial").write_text("".join(full[:11]) + full[11][:20])
    module = run_writer(tiny_world, tmp_path / "killed", captions)

    assert sorted(module.seen) == sorted(ids[11:])  # the rerun only did the rest (the torn one again)
    manifest = read_manifest(killed)
    assert manifest["records"] == len(ids) and manifest["written_this_run"] == len(ids) - 11
    assert manifest["already_stored_before_this_run"] == 11
    assert not list(killed.glob("*.partial")) and not list(killed.glob(".stored_clips*"))
    stored = [r["clip_id"] for r in RoundReader(killed)]
    assert sorted(stored) == sorted(ids)  # every clip exactly once

    # Running it again after completion does nothing and keeps the round intact.
    again = run_writer(tiny_world, tmp_path / "killed", captions)
    assert again.seen == [] and read_manifest(killed)["records"] == len(ids)


def test_writer_finishes_shards_of_ranks_gone_in_the_resume(tiny_world, tmp_path):
    ids = pool_clip_ids(tiny_world)
    captions = {c: f"A green cross number {i}." for i, c in enumerate(ids)}
    run_writer(tiny_world, tmp_path / "full", captions)
    lines = (round_dir(tmp_path / "full", 0) / "part-00000.jsonl").read_text().splitlines(keepends=True)
    killed = round_dir(tmp_path / "killed", 0)
    killed.mkdir(parents=True)
    (killed / "part-00000.jsonl.partial").write_text("".join(lines[0:10:2]))   # a 2-rank run, killed
    (killed / "part-00001.jsonl.partial").write_text("".join(lines[1:10:2]))
    run_writer(tiny_world, tmp_path / "killed", captions)                      # resumed on 1 rank
    manifest = read_manifest(killed)
    assert manifest["parts"] == ["part-00000.jsonl", "part-00001.jsonl"]
    assert sorted(r["clip_id"] for r in RoundReader(killed)) == sorted(ids)


# ------------------------------------------------------------------------------------ the refiner


def test_uniform_frame_indices():
    assert uniform_frame_indices(3, 3).tolist() == [0, 1, 2]
    assert uniform_frame_indices(8, 3).tolist() == [1, 4, 6]
    with pytest.raises(ValueError, match="data.num_frames"):
        uniform_frame_indices(2, 3)


def test_refiner_predict_writes_a_round_covering_every_clip(tiny_world, ilm_run, tiny_lm_dir):
    cli_main(refine_args(tiny_world, ilm_run, tiny_lm_dir))
    folder = round_dir(ilm_run, 0)
    manifest = read_manifest(folder)
    ids = pool_clip_ids(tiny_world)
    records = list(RoundReader(folder))
    assert sorted(r["clip_id"] for r in records) == sorted(ids)
    assert manifest["records"] == len(ids) and manifest["round"] == 0
    assert all(r["round"] == 0 and r["source"] in ("initial_refiner", "asr_fallback") for r in records)
    assert manifest["failures"] == sum(r["source"] == "asr_fallback" for r in records)
    assert manifest["model"]["frames_per_clip"] == 3 and "tiny single-frame" in manifest["model"]["ilm"]
    assert manifest["throughput_clips_per_s"] > 0 and len(manifest["config_hash"]) == 16
    # The round is a training source: its video paths resolve through the manifest's video_root.
    reader = open_source(folder)
    assert (reader.video_root / records[0]["video_path"]).is_file()
    rerun = cli_main(refine_args(tiny_world, ilm_run, tiny_lm_dir))  # nothing left to do
    assert read_manifest(folder)["written_this_run"] == 0 and read_manifest(folder)["records"] == len(ids)
    assert read_manifest(folder)["config_hash"] == manifest["config_hash"]
    del rerun


def test_merger_sft_saves_a_folder_the_refiner_loads(tiny_world, ilm_run, tiny_lm_dir, tmp_path):
    out = tmp_path / "tuned"
    cli_main([
        "fit", "--config", str(CONFIGS / "merger_sft.yaml"), "--world_dir", str(tiny_world), "--run_dir", str(ilm_run),
        "--model.init_args.base_model_path", str(tiny_lm_dir), "--model.init_args.output_dir", str(out),
        "--model.init_args.trainable_layers", "1", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "logs"), "--trainer.logger", "false",
        "--data.init_args.batch_size", "2",
    ])
    assert (out / "config.json").is_file() and (out / PROMPT_SETTINGS_FILE).is_file()
    tuned = CaptionMerger.from_path(out)
    assert tuned.prompt_settings() == json.loads((out / PROMPT_SETTINGS_FILE).read_text())
    base, _, _ = load_merge_lm(tiny_lm_dir)
    top = f"model.layers.{base.config.num_hidden_layers - 1}.mlp.up_proj.weight"
    bottom = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(tuned.language_model.state_dict()[top], base.state_dict()[top])  # learnt
    assert torch.equal(tuned.language_model.state_dict()[bottom], base.state_dict()[bottom])  # frozen


# ------------------------------------------------------------------------------ errors name paths


def test_missing_paths_name_their_key(tmp_path, ilm_run):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"model\.ilm_path.*nowhere"):
        InitialRefinerModule(ilm_path=str(missing))
    with pytest.raises(ValueError, match=r"model\.ilm_path"):
        InitialRefinerModule(ilm_path=None)
    ckpt = str(ilm_run / "ilm" / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"model\.merger_path.*nowhere"):
        InitialRefinerModule(ilm_path=ckpt, merger_path=str(missing))
    with pytest.raises(FileNotFoundError, match=r"model\.base_model_path.*nowhere"):
        MergerSFTModule(ilm_path=ckpt, base_model_path=str(missing))
    with pytest.raises(FileNotFoundError, match=r"model\.ilm_path.*nowhere"):
        build_frame_captioner("hf", str(missing))
    missing.mkdir()  # a folder, but no checkpoint in it
    with pytest.raises(FileNotFoundError, match=r"model\.ilm_path.*no config\.json"):
        build_frame_captioner("hf", str(missing))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFImageCaptioner(missing)
    with pytest.raises(FileNotFoundError, match=r"model\.merger_path.*nowhere"):
        load_merge_lm(missing)


def test_the_manifest_names_the_merge_llms_dtype(ilm_run, tiny_lm_dir):
    ckpt = str(ilm_run / "ilm" / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match=r"model\.merger_dtype"):
        InitialRefinerModule(ilm_path=ckpt, merger_dtype="fp8")
    module = InitialRefinerModule(ilm_path=ckpt, merger_path=str(tiny_lm_dir), merger_dtype="bfloat16")
    module.configure_model()
    assert next(module.merger.language_model.parameters()).dtype == torch.bfloat16
    assert "bfloat16" in module.describe()["llm"]


def test_refine_cli_names_a_missing_ilm_checkpoint(tiny_world, tmp_path):
    # jsonargparse re-raises the module's error inside its own ValueError; the message survives.
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        cli_main(refine_args(tiny_world, tmp_path, tmp_path))
    assert "model.ilm_path" in str(info.value) and str(tmp_path / "ilm" / "checkpoints" / "last.ckpt") in str(info.value)


# ----------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_refiner_with_smollm2_writes_sentences(tiny_world, ilm_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ilm_run / "ilm", run / "ilm")
    cli_main([
        "predict", "--config", str(CONFIGS / "initial_refine.yaml"), "--world_dir", str(tiny_world),
        "--run_dir", str(run), "--model.init_args.merger_path", "null", "--model.init_args.max_new_tokens", "24",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
        "--trainer.limit_predict_batches", "1", "--trainer.enable_progress_bar", "false",
    ])
    records = list(RoundReader(round_dir(run, 0)))
    assert len(records) == 8
    refined = [r["caption"] for r in records if r["source"] == "initial_refiner"]
    assert refined and all(c.endswith(".") and "\n" not in c and "<|" not in c for c in refined)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_round_resumes_with_one_shard_per_rank_and_every_clip_once(tiny_world, ilm_run, tiny_lm_dir, tmp_path):
    """predict with DDP on 2 CPU processes, resuming a killed 2-rank pass: the stored-clips
    snapshot (rank 0 takes it, both read it), the writer's gather and barriers, rank 0's manifest."""
    run = tmp_path / "run"
    shutil.copytree(ilm_run / "ilm", run / "ilm")
    pool = list(open_source(tiny_world / "pool"))
    for part, records in ((0, pool[0:6:2]), (1, pool[1:4:2])):  # killed after 3 and 2 records
        writer = ShardWriter(round_dir(run, 0), part)
        for record in records:
            writer.write({**record, "round": 0, "source": "before the kill"})
        writer.close()
    env = rank_env()
    args = refine_args(tiny_world, run, tiny_lm_dir, "--trainer.strategy", "ddp", "--trainer.devices", "2")
    subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env, check=True,
                   capture_output=True, text=True, timeout=300)
    manifest = read_manifest(round_dir(run, 0))
    assert manifest["parts"] == ["part-00000.jsonl", "part-00001.jsonl"] and manifest["num_ranks"] == 2
    ids = pool_clip_ids(tiny_world)
    records = list(RoundReader(round_dir(run, 0)))
    assert sorted(r["clip_id"] for r in records) == sorted(ids)  # every clip exactly once
    assert sum(r["source"] == "before the kill" for r in records) == 5
    assert manifest["records"] == len(ids) and manifest["written_this_run"] == len(ids) - 5
    assert manifest["already_stored_before_this_run"] == 5
    assert not list(round_dir(run, 0).glob(".stored_clips*"))  # the snapshot served this pass only


def test_merge_samples_keep_the_farthest_merge_grounded_in_the_frames_and_transcript(ilm_run, tiny_lm_dir):
    ckpt = str(ilm_run / "ilm" / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="model.merge_samples must be >= 0"):
        InitialRefinerModule(ilm_path=ckpt, merge_samples=-1)
    module = InitialRefinerModule(ilm_path=ckpt, merger_path=str(tiny_lm_dir), max_new_tokens=8, merge_samples=3,
                                  temperature=1.5, sample_seed=7)
    module.configure_model()
    torch.manual_seed(0)
    # transcripts naming most values, so that a random LM's samples are often grounded
    asrs = [" ".join(WORDS[:-8]), " ".join(WORDS[2:]), " ".join(WORDS[::-1])]
    batch = {"video": torch.rand(3, 3, 3, 32, 32), "asr": asrs, "clip_id": ["a", "b", "c"]}
    captions, frames = module.refine(batch)
    merger = module.merger
    prompts = [merger.prompt(f, a) for f, a in zip(frames, asrs)]
    greedy = [clean_caption(t) for t in merger.generate_raw(prompts)]
    samples = [[clean_caption(t) for t in merger.generate_raw(prompts, sample_seeds=[clip_seed(c, 7 + j) for c in "abc"],
                                                             temperature=1.5, top_p=0.95)] for j in range(3)]
    expected = [farthest_grounded(g, [s[i] for s in samples], world_tags(" ".join([*frames[i], asrs[i]])))
                for i, g in enumerate(greedy)]
    assert captions == expected and captions != greedy  # one generation of greedy and sampled rows, then the choice
    assert module.describe()["merge_samples"] == 3
