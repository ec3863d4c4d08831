"""The streaming DataModule: splits, skips, and exact mid-epoch resume with workers."""

import json
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.skipped_samples import SkippedSamplesMonitor
from datamodules.clip_datamodule import ClipCaptionDataModule
from datamodules.streaming_dataset import ClipStream, shuffle_buffer


class RecordingModule(L.LightningModule):
    """Trains a linear probe and remembers which clips every step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.probe = torch.nn.Linear(3, 1)
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(list(batch["clip_id"]))
        if not batch["clip_id"]:
            return None
        x = batch["video"].mean(dim=(1, 3, 4))  # [B, C]
        return self.probe(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_dm(source, **kw) -> ClipCaptionDataModule:
    args = dict(batch_size=3, num_workers=2, num_frames=4, image_size=16, shuffle_buffer_size=8, seed=7, val_fraction=0.0)
    args.update(kw)
    return ClipCaptionDataModule(train_source=str(source), **args)


def make_trainer(tmp_path, name, **kw) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path / name, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw,
    )


def test_shuffle_buffer_is_a_seeded_permutation():
    import random

    items = list(range(50))
    a = list(shuffle_buffer(items, 8, random.Random(1)))
    b = list(shuffle_buffer(items, 8, random.Random(1)))
    c = list(shuffle_buffer(items, 8, random.Random(2)))
    assert sorted(a) == items and a == b and a != c and a != items


def test_ranks_and_workers_partition_the_records(tiny_world):
    dm = make_dm(tiny_world / "pool")
    records = list(__import__("datamodules.annotation_sources", fromlist=["x"]).open_source(tiny_world / "pool"))
    seen = []
    for rank in range(2):
        stream = ClipStream(lambda: iter(records), tiny_world / "pool", batch_size=2, num_frames=2,
                            shuffle=True, shuffle_buffer_size=5, seed=1, rank=rank, world_size=2)
        ids = [r["clip_id"] for r in stream.rank_records()]
        seen.append(ids)
    assert len(seen[0]) == len(seen[1]) == len(records) // 2
    assert not set(seen[0]) & set(seen[1])
    assert dm.hparams.batch_size == 3


@pytest.mark.slow
def test_mid_epoch_resume_sees_exactly_the_uninterrupted_samples(tiny_world, tmp_path):
    epochs = 2
    full = RecordingModule()
    make_trainer(tmp_path, "full", max_epochs=epochs).fit(full, datamodule=make_dm(tiny_world / "pool"))
    n_batches = len(full.seen) // epochs
    assert n_batches >= 5, "the fixture must be big enough to stop in the middle of an epoch"
    assert full.seen[:n_batches] != full.seen[n_batches:], "epochs must be shuffled differently"

    for stop in (3, n_batches + 2):  # odd counts: the resumed pass starts on the other worker
        first = RecordingModule()
        ckpt = ModelCheckpoint(dirpath=tmp_path / f"ckpt{stop}", every_n_train_steps=stop, save_top_k=-1)
        make_trainer(tmp_path, f"a{stop}", max_steps=stop, callbacks=[ckpt]).fit(first, datamodule=make_dm(tiny_world / "pool"))
        path = next((tmp_path / f"ckpt{stop}").glob("*.ckpt"))
        assert torch.load(path, weights_only=False)["ClipCaptionDataModule"]["batches_consumed"] == stop % n_batches

        second = RecordingModule()
        make_trainer(tmp_path, f"b{stop}", max_epochs=epochs).fit(
            second, datamodule=make_dm(tiny_world / "pool"), ckpt_path=path
        )
        assert first.seen + second.seen == full.seen


def test_corrupt_and_missing_videos_are_skipped_counted_and_logged(tiny_world, tmp_path, caplog):
    pool = tmp_path / "pool"
    shutil.copytree(tiny_world / "pool", pool)
    asr = json.loads((pool / "asr.json").read_text())
    broken, missing = sorted(asr)[:2]
    (pool / "videos" / f"{broken}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (pool / "videos" / f"{missing}.mp4").unlink()
    n_bad = len(asr[broken]["text"]) + len(asr[missing]["text"])
    n_total = sum(len(v["text"]) for v in asr.values())

    module = RecordingModule()
    logger = TensorBoardLogger(tmp_path / "tb", name="", version="", default_hp_metric=False)
    dm = make_dm(pool, num_workers=0, batch_size=4)
    trainer = make_trainer(tmp_path, "skip", max_epochs=1, callbacks=[SkippedSamplesMonitor()], log_every_n_steps=1)
    trainer.logger = logger
    with caplog.at_level("WARNING"):
        trainer.fit(module, datamodule=dm)

    seen = [c for step in module.seen for c in step]
    assert len(seen) == n_total - n_bad
    assert not any(c.startswith((broken, missing)) for c in seen)
    assert dm.skipped_total == n_bad
    assert f"{broken}.mp4" in caplog.text and f"{missing}.mp4" in caplog.text

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Scalars("data/skipped_clips")[-1].value == n_bad


def test_val_split_is_disjoint_and_evaluation_frames_are_uniform(tiny_world):
    dm = make_dm(tiny_world / "pool", val_fraction=0.3, num_workers=0)
    train_ids = [c for b in dm.train_dataloader() for c in b["clip_id"]]
    val_batches = list(dm.val_dataloader())
    val_ids = [c for b in val_batches for c in b["clip_id"]]
    assert train_ids and val_ids and not set(train_ids) & set(val_ids)
    again = [c for b in dm.val_dataloader() for c in b["clip_id"]]
    assert again == val_ids, "validation order is fixed"
    first = val_batches[0]["video"]
    assert first.shape[1:] == (4, 3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, next(iter(dm.val_dataloader()))["video"])


def test_missing_source_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_source: .*nowhere"):
        ClipCaptionDataModule(train_source=str(tmp_path / "nowhere"))
