"""Fully sharded (FSDP2) training on 2 CPU processes (gloo), checked against one process.

Two ranks train the tiny VideoLLM through ``ModelParallelStrategy`` with ``fully_shard`` per block
and activation checkpointing (the recipe of ``configs/real/``, in fp32 here so that the comparison
can be tight) for one epoch with a validation pass that generates captions, save a sharded
checkpoint, resume from it for a second epoch, and record every step's loss. One process then
trains the same model on the same batches with gradient accumulation 2: micro-batch 2k+r is rank
r's batch of step k, and averaging the micro-batches' gradients is what FSDP's reduce-scatter
does with the ranks' gradients, so both runs take the same optimizer steps. The consolidated
checkpoint must hold the one-process run's weights and load where a VideoLLM checkpoint is
read (generative QA's ``init_from``). The same ranks also take a bf16 mixed-precision step and
train the dual encoder sharded (its InfoNCE loss covers the batch gathered from both ranks, so
one process on that batch must see the same loss). A last run gives the ranks different numbers
of batches: it must fail within the collective timeout, each rank naming itself, not hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader

from lightning_modules.components.gamma_schedules import ConstantGamma
from lightning_modules.components.tokenizer import save_tokenizer, train_tokenizer
from lightning_modules.components.video_llm import prompt_words
from lightning_modules.consolidate_checkpoint import consolidate
from lightning_modules.dual_encoder import DualEncoder
from lightning_modules.video_llm_module import VideoLLMModule
from lightning_modules.video_qa_generative import GenerativeVideoQA
from rank_processes import rank_env

ROOT = Path(__file__).resolve().parents[1]
WORDS = "red blue green circle square triangle moves left right up down grows shrinks a the on".split()
BATCH, FRAMES, SIZE = 2, 4, 32
TRAIN_BATCHES = 4  # per epoch: 2 steps of 2 ranks, or 2 steps of 2 accumulated micro-batches
COLLECTIVE_TIMEOUT_S = 60  # a dead or stray rank fails the run after this, never hangs it
EARLY_TIMEOUT_S = 10  # the same, shorter, for the test that makes a rank finish early
LOSS_RTOL = 1e-4  # fp32 on both sides; only the order of floating-point sums differs
WEIGHT_ATOL = 1e-4  # after 4 AdamW steps at lr 1e-3
BF16_RTOL = 2e-2  # bf16 weights and activations against fp32 on the first step


def make_batches(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        pick = lambda n: [WORDS[int(j)] for j in torch.randint(len(WORDS), (n,), generator=g)]  # noqa: E731
        batches.append({
            "clip_id": [f"clip{i}_{j}" for j in range(BATCH)],
            "video": torch.randn(BATCH, FRAMES, 3, SIZE, SIZE, generator=g),
            "asr": [" ".join(pick(5)) for _ in range(BATCH)],
            "caption": [" ".join(pick(3 + 2 * j)) for j in range(BATCH)],  # unequal lengths on purpose
        })
    return batches


class RankBatches(L.LightningDataModule):
    """Fixed batches, rank r of w taking every w-th from the r-th (the same split for every epoch)."""

    def __init__(self, train: list[dict], val: list[dict]) -> None:
        super().__init__()
        self.train, self.val = train, val

    def _share(self, batches: list[dict]) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(batches[rank::world], batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._share(self.train)

    def val_dataloader(self) -> DataLoader:
        return self._share(self.val)


class UnevenBatches(RankBatches):
    """Rank 0 gets three batches, rank 1 one: rank 1 ends its epoch while rank 0 waits in an all-gather."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train[: 3 if self.trainer.global_rank == 0 else 1], batch_size=None)


def merged(batches: list[dict]) -> dict:
    """One batch holding the given batches' rows in order (what the ranks gather between them)."""
    return {k: torch.cat([b[k] for b in batches]) if k == "video" else sum((b[k] for b in batches), [])
            for k in batches[0]}


class LossRecorder(Callback):
    def __init__(self, key: str = "train/pretrain_loss") -> None:
        self.key, self.losses = key, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics[self.key]))


def make_module(tokenizer: Path, bf16: bool = False) -> VideoLLMModule:
    return VideoLLMModule(
        preset="tiny", tokenizer=str(tokenizer), num_frames=FRAMES, image_size=SIZE, gamma_schedule=ConstantGamma(0.5),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3), max_new_tokens=6, val_generate_batches=1,
        fsdp_mixed_precision=bf16, activation_checkpointing=True,
    )


def make_dual_encoder(tokenizer: Path) -> DualEncoder:
    return DualEncoder(
        text_model="tiny", tokenizer=str(tokenizer), text_vocab_size=64, num_frames=FRAMES, image_size=SIZE,
        embed_dim=32, optimizer=lambda groups: torch.optim.AdamW(groups, lr=1e-3), fsdp_mixed_precision=False,
        activation_checkpointing=True,
    )


def make_trainer(root: Path, epochs: int, callbacks: list, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=root, accelerator="cpu", max_epochs=epochs, logger=False, callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     use_distributed_sampler=False, gradient_clip_val=1.0, **kw)


def sharded_worker(tokenizer: Path, out: Path) -> None:
    """One rank: fit an epoch sharded, resume from the sharded checkpoint for a second, then one step in
    bf16 mixed precision from the same start; save the losses and the bf16 run's parameter dtypes."""
    data = RankBatches(make_batches(TRAIN_BATCHES, seed=1), make_batches(2, seed=2))
    strategy = lambda: ModelParallelStrategy(  # noqa: E731
        data_parallel_size=2, tensor_parallel_size=1, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    checkpoints = lambda: ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", save_top_k=-1,  # noqa: E731
                                          every_n_epochs=1, save_on_train_epoch_end=True)
    first, second = LossRecorder(), LossRecorder()
    L.seed_everything(0)
    make_trainer(out, 1, [checkpoints(), first], devices=2, strategy=strategy(), limit_val_batches=1).fit(
        make_module(tokenizer), datamodule=data)
    make_trainer(out, 2, [checkpoints(), second], devices=2, strategy=strategy(), limit_val_batches=0).fit(
        make_module(tokenizer), datamodule=data, ckpt_path=out / "ckpt" / "step=2.ckpt")
    L.seed_everything(0)
    bf16, mixed = make_module(tokenizer, bf16=True), LossRecorder()
    make_trainer(out / "bf16", 1, [mixed], devices=2, strategy=strategy(), max_steps=1, limit_val_batches=0,
                 enable_checkpointing=False).fit(bf16, datamodule=data)
    L.seed_everything(0)
    dual = LossRecorder("train/loss")
    make_trainer(out / "dual", 1, [dual], devices=2, strategy=strategy(), limit_val_batches=0,
                 enable_checkpointing=False).fit(make_dual_encoder(tokenizer), datamodule=data)
    rank = int(os.environ["LOCAL_RANK"])
    result = {"fp32": first.losses + second.losses, "bf16": mixed.losses, "dual_encoder": dual.losses,
              "bf16_param_dtypes": sorted({str(p.dtype) for p in bf16.parameters()})}
    (out / f"losses-{rank}.json").write_text(json.dumps(result))


class Announce(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        print(f"rank {trainer.global_rank} trained batch {batch_idx}", flush=True)


def uneven_worker(tokenizer: Path, out: Path) -> None:
    """One rank of a run whose ranks have different numbers of batches (it must fail, not hang)."""
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                     timeout=timedelta(seconds=EARLY_TIMEOUT_S))
    make_trainer(out, 1, [Announce()], devices=2, strategy=strategy, limit_val_batches=0).fit(
        make_module(tokenizer), datamodule=UnevenBatches(make_batches(3, seed=1), []))


def launch(args: list[str], world: int = 2, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks of this file as torchrun would (Lightning sees externally created processes)."""
    env = rank_env(WORLD_SIZE=str(world), NODE_RANK="0", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, __file__, *args], env=dict(env, LOCAL_RANK=str(r)), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    deadline = time.monotonic() + timeout
    results = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"the {world} ranks did not finish within {timeout} s (a hang)") from None
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    return results


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    save_tokenizer(train_tokenizer([*prompt_words(), " ".join(WORDS)], kind="word"), folder)
    return folder


@pytest.mark.distributed
def test_sharded_fit_resume_and_consolidate_match_one_process(tokenizer_dir, tmp_path):
    results = launch(["sharded", str(tokenizer_dir), str(tmp_path)])
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed:\n{r.stdout[-4000:]}"
    results = [json.loads((tmp_path / f"losses-{rank}.json").read_text()) for rank in range(2)]
    sharded = [r["fp32"] for r in results]
    assert (tmp_path / "ckpt" / "step=2.ckpt").is_dir() and (tmp_path / "ckpt" / "step=4.ckpt").is_dir()

    L.seed_everything(0)
    reference, recorder = make_module(tokenizer_dir), LossRecorder()
    data = RankBatches(make_batches(TRAIN_BATCHES, seed=1), [])
    make_trainer(tmp_path / "one", 2, [recorder], devices=1, accumulate_grad_batches=2, limit_val_batches=0).fit(
        reference, datamodule=data)
    # micro-batch 2k + r of the one process is rank r's batch of step k
    interleaved = [sharded[r][k] for k in range(4) for r in range(2)]
    assert len(recorder.losses) == 8
    assert interleaved == pytest.approx(recorder.losses, rel=LOSS_RTOL)
    # it trained (the same batches, an epoch apart): the comparison is not of constants
    assert all(later < 0.95 * first for first, later in zip(recorder.losses[:4], recorder.losses[4:]))

    for rank, r in enumerate(results):  # bf16 compute moves the first loss a little; master weights stay fp32
        assert r["bf16"][0] != sharded[rank][0] and r["bf16"][0] == pytest.approx(sharded[rank][0], rel=BF16_RTOL)
        assert r["bf16_param_dtypes"] == ["torch.float32"]

    # the dual encoder's loss is over the batch gathered from both ranks: the same as one process on it
    L.seed_everything(0)
    one_dual = LossRecorder("train/loss")
    train = make_batches(TRAIN_BATCHES, seed=1)
    make_trainer(tmp_path / "dual", 1, [one_dual], devices=1, limit_val_batches=0, enable_checkpointing=False).fit(
        make_dual_encoder(tokenizer_dir), datamodule=RankBatches([merged(train[:2]), merged(train[2:])], []))
    for r in results:
        assert r["dual_encoder"] == pytest.approx(one_dual.losses, rel=LOSS_RTOL) and len(one_dual.losses) == 2
    assert one_dual.losses[1] != one_dual.losses[0]

    single = consolidate(tmp_path / "ckpt" / "step=4.ckpt", tmp_path / "step=4.consolidated.ckpt")
    qa = GenerativeVideoQA(preset="tiny", tokenizer=str(tokenizer_dir), init_from=str(single), num_frames=FRAMES,
                           image_size=SIZE)
    qa.configure_model()
    want = reference.net.state_dict()
    got = qa.net.state_dict()
    assert got.keys() == want.keys()
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst < WEIGHT_ATOL, f"consolidated weights differ from the one-process run by {worst}"


@pytest.mark.distributed
def test_a_rank_that_finishes_early_fails_the_run_naming_the_rank(tokenizer_dir, tmp_path):
    results = launch(["uneven", str(tokenizer_dir), str(tmp_path)], timeout=EARLY_TIMEOUT_S + 90)
    for rank, r in enumerate(results):
        assert f"rank {rank} trained batch 0" in r.stdout, r.stdout[-3000:]  # it failed in training, not before
        assert r.returncode != 0, f"rank {rank} should have failed:\n{r.stdout[-3000:]}"
        # torch prefixes an uncaught error with the rank that raised it
        assert f"[rank{rank}]: RuntimeError" in r.stdout, r.stdout[-3000:]
    # the first rank to give up names the collective timeout; the other may see its peer go away
    errors = [line for r in results for line in r.stdout.splitlines() if "RuntimeError:" in line]
    assert any("timed out" in e.lower() or "timeout" in e.lower() for e in errors), errors


if __name__ == "__main__":
    {"sharded": sharded_worker, "uneven": uneven_worker}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
