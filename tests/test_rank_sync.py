"""Rank agreement with a deadline: failures reach every rank, a missing rank is named, nothing hangs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from callbacks.rank_sync import RankFailure, RankSync
from rank_processes import rank_env

ROOT = Path(__file__).resolve().parents[1]

# One gloo rank: agreements where rank 1 has work, then fails; then one that rank 1 never reaches.
WORKER = """
import json, os, sys, time
import torch.distributed as dist
from callbacks.rank_sync import RankFailure, RankSync
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
out, began = [], time.monotonic()
sync = RankSync("test round", timeout_s=5.0)
try:
    out.append(sync.agree(work=rank == 1))
    sync.agree("DataLoadingError: rank 1, batch 4 (reading pool/00003.tar)" if rank == 1 else None)
except RankFailure as e:
    out += [str(e), time.monotonic() - began]
if rank == 0:
    began = time.monotonic()
    try:
        RankSync("next round", timeout_s=2.0).agree()
    except RankFailure as e:
        out += [str(e), time.monotonic() - began]
json.dump(out, open(sys.argv[1] + str(rank), "w"))
"""


def test_one_process_agrees_with_itself():
    sync = RankSync("solo", timeout_s=1.0)
    assert sync.agree(work=True) and not sync.agree()
    with pytest.raises(RankFailure, match="solo: rank 0: broken"):
        sync.agree("broken")


@pytest.mark.distributed
def test_a_failed_rank_stops_every_rank_and_a_missing_one_is_named(tmp_path):
    env = rank_env(WORLD_SIZE="2", OMP_NUM_THREADS="1")
    out = str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, out], env=dict(env, RANK=str(r))) for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rank0, rank1 = (json.loads(Path(out + str(r)).read_text()) for r in range(2))
    failure = "test round: rank 1: DataLoadingError: rank 1, batch 4 (reading pool/00003.tar)"
    assert rank1[:2] == [True, failure] and rank0[-4] == failure  # rank 0 may stop one agreement earlier
    assert rank0[-3] < 5.0  # at once, not after the deadline
    assert "next round: rank(s) [1] did not report within 2 s" in rank0[-2] and 2.0 <= rank0[-1] < 10.0
