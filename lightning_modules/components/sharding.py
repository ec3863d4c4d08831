"""Fully sharded data parallelism (FSDP2) for the project's networks, in plain torch.

``shard_model(model, mesh)`` applies ``fully_shard`` to every transformer block of every HF model
inside ``model`` (the block classes each model names in ``_no_split_modules``: TimeSformer layers,
Llama decoder layers, BERT layers and embeddings), then to ``model`` itself, which takes the rest
(patch and token embeddings, connector, LM head, projections). A block is one all-gather and one
reduce-scatter: only the block being computed holds its full weights.

- Mixed precision (``mixed_precision=True``): blocks compute with bf16 weights
  (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``), gradients are averaged in fp32,
  and the sharded parameters, which the optimizer updates, are fp32 master weights. A bf16
  checkpoint is upcast after sharding, shard by shard, so no rank ever holds a full fp32 copy.
- Activation checkpointing: each block's activations are recomputed in the backward pass
  (torch's composable ``checkpoint``, applied before sharding; parameter names do not change;
  the LM's KV cache is off in training forwards, since a recomputed layer would write it twice).
- 0-d parameters (a learnable temperature), which ``fully_shard`` cannot split, are kept whole
  on every rank and their gradients averaged over the mesh by a hook.
- ``forward_methods``: methods other than ``forward`` that callers invoke on ``model`` (the
  VideoLLM's ``generate``, the dual encoder's ``encode_video`` …) gather the root's parameters too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from transformers import PreTrainedModel

__all__ = ["data_parallel_mesh", "transformer_blocks", "shard_model"]


def data_parallel_mesh(device_mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D data-parallel mesh to shard over, from Lightning's ``(data_parallel, tensor_parallel)`` mesh.

    Only FSDP is implemented here: a tensor-parallel size above 1 is a configuration error.
    """
    if device_mesh.ndim == 1:
        return device_mesh
    tp = device_mesh["tensor_parallel"].size()
    if tp != 1:
        raise ValueError(
            f"the device mesh has tensor_parallel size {tp}; these models are only fully sharded: set the "
            "strategy's data_parallel_size to the world size (nodes × devices) and tensor_parallel_size to 1"
        )
    return device_mesh["data_parallel"]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Every submodule whose class an enclosing HF model lists in ``_no_split_modules``, in module order."""
    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            names.update(module._no_split_modules or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    mixed_precision: bool = True,
    activation_checkpointing: bool = False,
    forward_methods: Iterable[str] = (),
) -> nn.Module:
    """Shard ``model`` in place over ``mesh`` (see the module docstring); returns it.

    Every rank must call this on identical weights: each keeps its own shard of them.
    """
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} holds no HF transformer blocks to shard")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision \
        else MixedPrecisionPolicy()
    if activation_checkpointing:
        _disable_training_kv_cache(model)
    scalars = _replicate_scalars(model, mesh)
    for block in blocks:
        if activation_checkpointing:
            checkpoint(block)
        fully_shard(block, mesh=mesh, mp_policy=policy, ignored_params=scalars)
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=scalars)
    for name in forward_methods:
        register_fsdp_forward_method(model, name)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            # HF's generate then keeps stepping until every rank's sequences are done (synced_gpus):
            # a rank that stopped early would leave the others waiting in a block's all-gather.
            module._is_fsdp_managed_module = True
    if mixed_precision:
        model.float()  # the shards become the fp32 master weights (FSDP re-registers them)
    return model


def _disable_training_kv_cache(model: nn.Module) -> None:
    # A recomputed decoder layer would append its keys and values to the forward's KV cache a second
    # time. Training needs no cache, and HF's generate asks for one explicitly (its own use_cache).
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module.config, "use_cache", False):
            module.config.use_cache = False


def _replicate_scalars(model: nn.Module, mesh: DeviceMesh) -> set[nn.Parameter]:
    # fully_shard cannot shard 0-d parameters (the dual encoder's log temperature): they stay whole
    # on every rank, and a gradient hook averages them over the mesh as the shards' gradients are.
    group, size = mesh.get_group(), mesh.size()

    def average(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad, group=group)  # gloo has no AVG
        param.grad.div_(size)

    scalars = {p for p in model.parameters() if p.ndim == 0}
    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average)
    return scalars
