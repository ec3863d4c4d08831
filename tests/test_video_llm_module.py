"""The VideoLLM system: CLI training, AdaTaiLr state across resume, SFT phase, bad input."""

import re

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning as L
from callbacks.gamma_monitor import GammaMonitor
from datamodules.clip_datamodule import ClipCaptionDataModule
from lightning_modules.components.gamma_schedules import AdaptiveGamma, ConstantGamma
from lightning_modules.components.grounded_choice import farthest_grounded
from lightning_modules.components.seeded_sampling import clip_seed
from lightning_modules.components.tag_recognition import tag_text, world_tags
from lightning_modules.video_llm_module import VideoLLMModule, attribute_agreement
from train import cli_main


def tiny_module(world, tmp_path, **kw) -> VideoLLMModule:
    args = dict(preset="tiny", tokenizer=str(tmp_path / "tok"), tokenizer_sources=[str(world / "pool")],
                num_frames=4, image_size=32, max_new_tokens=12)
    args.update(kw)
    return VideoLLMModule(**args)


def tiny_data(world, **kw) -> ClipCaptionDataModule:
    args = dict(train_source=str(world / "pool"), val_source=str(world / "pool" / "human_refined.jsonl"),
                batch_size=8, num_workers=0, num_frames=4, image_size=32)
    args.update(kw)
    return ClipCaptionDataModule(**args)


def trainer(tmp_path, name, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path / name, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=1, **kw)


def test_fit_through_the_cli_logs_gamma_and_writes_the_curve(tiny_world, tmp_path):
    run = tmp_path / "run"
    cli_main([
        "fit", "--config", "configs/demo/videollm_pretrain.yaml", "--world_dir", str(tiny_world), "--run_dir", str(run),
        "--trainer.max_steps", "6", "--trainer.max_epochs", "1", "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", "4", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "3",
        "--trainer.enable_progress_bar", "false",
    ])
    curve = (run / "gamma_curve.csv").read_text().splitlines()
    assert curve[0] == "step,gamma,mean_p,mean_weight,clamped_fraction,nll" and len(curve) == 7
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"adatailr/gamma", "adatailr/mean_p", "adatailr/mean_weight", "adatailr/clamped_fraction", "adatailr/nll",
            "train/pretrain_loss", "val/caption_nll", "data/skipped_clips"} <= tags


def test_gamma_state_and_monitor_history_survive_resume(tiny_world, tmp_path):
    schedule = dict(lam=3.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1)
    first, monitor = tiny_module(tiny_world, tmp_path, gamma_schedule=AdaptiveGamma(**schedule)), GammaMonitor()
    trainer(tmp_path, "a", max_steps=3, callbacks=[ckpt, monitor]).fit(first, datamodule=tiny_data(tiny_world))
    path = next((tmp_path / "ck").glob("*.ckpt"))
    saved = torch.load(path, weights_only=False)
    assert saved["gamma_schedule"]["step"] == 3 and saved["gamma_schedule"]["ema"] > 0

    second, second_monitor = tiny_module(tiny_world, tmp_path, gamma_schedule=AdaptiveGamma(**schedule)), GammaMonitor()
    trainer(tmp_path, "b", max_steps=5, callbacks=[second_monitor]).fit(second, datamodule=tiny_data(tiny_world), ckpt_path=path)
    assert second.gamma_schedule.step == 5
    assert [r["step"] for r in second_monitor.history] == [1, 2, 3, 4, 5]
    assert second_monitor.history[:3] == monitor.history
    gammas = [r["gamma"] for r in second_monitor.history]
    assert gammas[0] == 0.0 and gammas == sorted(gammas) and gammas[-1] > 0


def test_sft_phase_is_plain_cross_entropy_and_leaves_gamma_alone(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, phase="sft", gamma_schedule=AdaptiveGamma(lam=5.0))
    monitor = GammaMonitor()
    trainer(tmp_path, "sft", max_steps=2, callbacks=[monitor]).fit(module, datamodule=tiny_data(tiny_world))
    assert module.gamma_schedule.step == 0
    assert all(r["gamma"] == 0.0 and r["mean_weight"] == pytest.approx(1.0) for r in monitor.history)


def test_constant_gamma_is_tailr(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, gamma_schedule=ConstantGamma(0.5))
    monitor = GammaMonitor()
    trainer(tmp_path, "c", max_steps=2, callbacks=[monitor]).fit(module, datamodule=tiny_data(tiny_world))
    assert [r["gamma"] for r in monitor.history] == [0.5, 0.5]
    assert all(r["mean_weight"] < 1.0 for r in monitor.history)


def test_predict_captions_every_clip_once(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path)
    data = tiny_data(tiny_world, val_fraction=0.0, val_source=None)
    out = [p for batch in trainer(tmp_path, "p").predict(module, datamodule=data) for p in batch]
    ids = [p["clip_id"] for p in out]
    from datamodules.annotation_sources import open_source

    assert sorted(ids) == sorted(r["clip_id"] for r in open_source(tiny_world / "pool"))
    assert all(isinstance(p["caption"], str) for p in out)


def test_bad_configuration_names_the_key(tiny_world, tmp_path):
    with pytest.raises(ValueError, match="model.preset: unknown preset 'huge'"):
        VideoLLMModule(preset="huge", tokenizer_sources=[str(tiny_world / "pool")])
    with pytest.raises(FileNotFoundError, match="model.language_model_path: /nowhere/vicuna"):
        VideoLLMModule(preset="real", video_encoder_path=str(tmp_path), language_model_path="/nowhere/vicuna")
    with pytest.raises(FileNotFoundError, match="model.tokenizer_sources: .*missing.jsonl"):
        VideoLLMModule(tokenizer_sources=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="model.tokenizer: preset 'tiny' needs"):
        VideoLLMModule(preset="tiny")
    with pytest.raises(ValueError, match="model.phase"):
        VideoLLMModule(tokenizer_sources=[str(tiny_world / "pool")], phase="finetune")
    with pytest.raises(ValueError, match="model.scheduler_interval: must be 'step' or 'epoch', got 'round'"):
        VideoLLMModule(tokenizer_sources=[str(tiny_world / "pool")], scheduler_interval="round")


@pytest.mark.parametrize("interval, changes", [("step", 5), ("epoch", 2)])
def test_the_scheduler_steps_by_the_configured_interval(tiny_world, tmp_path, interval, changes):
    lrs = []

    class RecordLr(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    module = tiny_module(tiny_world, tmp_path, scheduler_interval=interval,
                         scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer(tmp_path, interval, max_epochs=3, limit_train_batches=2, callbacks=[RecordLr()]).fit(
        module, datamodule=tiny_data(tiny_world))
    assert len(lrs) == 6 and sum(a != b for a, b in zip(lrs, lrs[1:])) == changes


def test_attribute_agreement_counts_only_judged_attributes():
    generated = ["a red ball moves left", "a blue box rises", "hello"]
    references = ["a crimson circle slides leftward on the beach", "a blue cube falls", "a green star"]
    agree = attribute_agreement(generated, references)
    assert agree["color"] == pytest.approx(2 / 3)  # red=crimson, blue=blue, silent≠green
    assert agree["shape"] == pytest.approx(2 / 3)
    assert agree["motion"] == pytest.approx(1 / 2)  # only two references name a motion
    assert agree["scene"] == 0.0


def test_asr_dropout_blanks_transcripts_reproducibly(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, asr_dropout=0.5)
    asrs = [f"transcript {i}" for i in range(64)]
    kept = module._drop_transcripts(asrs)
    blank = sum(a == "" for a in kept)
    assert 16 <= blank <= 48 and all(k in ("", a) for k, a in zip(kept, asrs))
    assert module._drop_transcripts(asrs) == kept  # same step, same draw: a resumed run drops the same
    assert tiny_module(tiny_world, tmp_path, asr_dropout=1.0)._drop_transcripts(asrs) == [""] * 64
    assert tiny_module(tiny_world, tmp_path)._drop_transcripts(asrs) == asrs
    with pytest.raises(ValueError, match="model.asr_dropout"):
        tiny_module(tiny_world, tmp_path, asr_dropout=1.5)


def test_captions_never_repeat_a_trigram(tiny_world, tmp_path):
    """An untrained decoder loops; the n-gram block keeps each trigram to one use per caption."""

    def repeats(module, batch) -> int:
        worst = 0
        for caption in module.caption(batch):
            ids = re.findall(r"\w+|[^\w\s]", caption)  # the word-level tokenizer's units
            trigrams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
            worst = max(worst, len(trigrams) - len(set(trigrams)))
        return worst

    torch.manual_seed(0)
    module = tiny_module(tiny_world, tmp_path, max_new_tokens=24)
    module.configure_model()
    batch = {"video": torch.randn(4, 4, 3, 32, 32), "asr": ["a red square moves left"] * 4}
    assert repeats(module, batch) == 0
    module.hparams.no_repeat_ngram_size = 0
    assert repeats(module, batch) > 0, "the untrained model did not loop: the check above proves nothing"


@pytest.mark.parametrize("tag_weight", [0.0, 0.5])
def test_a_rank_without_clips_still_takes_part_in_the_step(tiny_world, tmp_path, tag_weight):
    """With other ranks, an all-undecodable batch becomes a zero loss over every parameter (so the
    gradient all-reduce and FSDP's gathers see this rank); alone, the step is skipped."""
    from types import SimpleNamespace

    module = tiny_module(tiny_world, tmp_path, tag_weight=tag_weight)
    module.configure_model()
    empty = {"clip_id": [], "asr": [], "caption": [], "video": torch.zeros(0, 4, 3, 32, 32)}
    module._trainer = SimpleNamespace(world_size=1)
    assert module.training_step(empty, 0) is None
    module._trainer = SimpleNamespace(world_size=2)
    calls = []
    module.gamma_schedule.update = lambda mean_p, num_tokens: calls.append(num_tokens)
    loss = module.training_step(empty, 0)
    assert calls == [0]  # joins the other ranks' Γ all-reduce, adding no tokens
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and not g.any() for g in grads)


def test_pool_grid_sets_the_number_of_visual_tokens(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, pool_grid=[2, 4, 4])
    module.configure_model()
    assert module.net.num_visual_tokens == 1 + 2 * 4 * 4  # CLS + 2 time steps × the 4×4 grid


def test_tag_weight_adds_the_tag_recognition_term(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, tag_weight=0.5, conv_stem=True)
    fit = trainer(tmp_path, "tags", max_steps=2)
    fit.fit(module, datamodule=tiny_data(tiny_world))
    assert module.tag_head is not None and fit.logged_metrics["train/tag_loss"] > 0
    assert tiny_module(tiny_world, tmp_path).tag_head is None
    with pytest.raises(ValueError, match="model.tag_weight"):
        tiny_module(tiny_world, tmp_path, tag_weight=-1.0)


def test_tag_prompt_teaches_with_the_caption_tags_and_captions_with_the_recognised_ones(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, tag_weight=0.5, tag_prompt=True, speech_tags=["motion"])
    module.configure_model()
    seen = []
    build = module.net.build_batch
    module.net.build_batch = lambda *a, **kw: seen.append(kw.get("tags")) or build(*a, **kw)
    batch = {"video": torch.randn(2, 4, 3, 32, 32), "asr": ["hello", "the orb goes up"], "clip_id": ["a", "b"],
             "caption": ["a scarlet orb drifts rightward in the snow", "a blue square"]}
    module._score(batch)
    assert seen[-1] == ["red circle right snow", "blue square"]  # the target's own tags, canonical words
    module.train()
    captions = module.caption(batch)
    recognised = seen[-1]
    assert module.training and len(recognised) == 2
    # the encoder's tokens are reused for the caption: the same as encoding the video again
    assert captions == module.net.generate(batch["video"], batch["asr"], max_new_tokens=12, tags=recognised,
                                           no_repeat_ngram_size=3)
    for words in recognised:  # one value at least of every attribute a clean caption names
        named = world_tags(words)
        assert {t.split(":")[0] for t in named} >= {"shape", "color", "motion", "scene"}
    with pytest.raises(ValueError, match="model.tag_prompt and model.speech_tags need model.tag_weight"):
        tiny_module(tiny_world, tmp_path, tag_prompt=True)
    with pytest.raises(ValueError, match="model.caption_samples needs model.tag_prompt"):
        tiny_module(tiny_world, tmp_path, tag_weight=0.5, caption_samples=2)
    with pytest.raises(ValueError, match="model.caption_samples and model.sample_captions"):
        tiny_module(tiny_world, tmp_path, tag_weight=0.5, tag_prompt=True, caption_samples=2, sample_captions=True)
    with pytest.raises(ValueError, match="model.speech_tags: .*'colour'"):
        tiny_module(tiny_world, tmp_path, tag_weight=0.5, speech_tags=["colour"]).configure_model()


def test_caption_samples_keep_the_first_sample_grounded_in_the_recognised_tags(tiny_world, tmp_path):
    module = tiny_module(tiny_world, tmp_path, tag_weight=0.5, tag_prompt=True, caption_samples=3, temperature=1.5)
    module.configure_model()
    # a head that recognises most tags (stubbed): most samples are then grounded, and some not
    module.tag_head.predict = lambda tokens: [set(module.tag_head.tags) - {"scene:city"} for _ in tokens]
    torch.manual_seed(0)
    batch = {"video": torch.randn(3, 4, 3, 32, 32), "asr": ["hello", "the orb goes up", "a red ring"],
             "clip_id": ["a", "b", "c"]}
    captions = module.caption(batch)
    _, recognised = module.recognised_tags(batch["video"])
    greedy = module.caption(batch, samples=0)
    tags = [tag_text(t, module.tag_head.tags) for t in recognised]
    samples = [module.net.generate(batch["video"], batch["asr"], max_new_tokens=12, tags=tags, no_repeat_ngram_size=3,
                                   sample_seeds=[clip_seed(c, 1 + j) for c in batch["clip_id"]], temperature=1.5,
                                   top_p=0.9) for j in range(3)]
    assert captions != greedy  # a sample replaced a greedy caption
    assert captions == [farthest_grounded(g, [s[i] for s in samples], recognised[i]) for i, g in enumerate(greedy)]
    # each clip's draws are its own: alone it gets the caption it got in the batch
    alone = module.caption({k: v[1:2] for k, v in batch.items()})
    assert alone == captions[1:2]
