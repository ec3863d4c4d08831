"""Shared test setup: offline hub, quiet threads, and one tiny synthetic world per session (twice:
its pool as a folder and as tar shards)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A synthetic world of 8 pool videos with small downstream sets, generated once."""
    from datamodules.synthetic_world import generate_world

    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(
        out, num_videos=8, seed=3, msrvtt_train=8, msrvtt_test=4, msvd_videos=8, foundation_images=20, workers=1
    )
    return out


@pytest.fixture(scope="session")
def wds_world(tmp_path_factory):
    """``tiny_world`` again (same seed and sizes), its pool written as video2dataset tar shards."""
    from datamodules.synthetic_world import generate_world

    out = tmp_path_factory.mktemp("wds_world") / "world"
    generate_world(
        out, num_videos=8, seed=3, msrvtt_train=8, msrvtt_test=4, msvd_videos=8, foundation_images=20, workers=1,
        pool_format="webdataset", videos_per_shard=3,
    )
    return out


@pytest.fixture
def count_reads(monkeypatch):
    """``count_reads(path)``: the list of modes in which ``path`` is opened for reading from then on."""
    real_open = open

    def watch(path) -> list[str]:
        reads: list[str] = []

        def counting_open(file, mode="r", *args, **kwargs):
            if str(file) == str(path) and "r" in mode:
                reads.append(mode)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr("builtins.open", counting_open)
        return reads

    return watch
