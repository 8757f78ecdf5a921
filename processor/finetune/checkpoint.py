"""Checkpoints under ``<out>/checkpoints/step-NNNNNN/``, resumable after a crash.

Each holds the LoRA as diffusers writes it (``pytorch_lora_weights.safetensors``, usable on its
own), the adapter and optimizer tensors and the random generator's state (safetensors: nothing is
pickled, as for model weights), the validation contact sheet, and ``state.json`` written LAST:
the step, the optimizer's non-tensor state and the training record so far. A checkpoint without
``state.json`` is one a crash cut short and is ignored, so the last complete one always resumes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from processor.finetune.location import Location
from processor.finetune.record import LORA_NAME, TrainingRecord

log = logging.getLogger("processor.finetune.checkpoint")

CHECKPOINTS = "checkpoints/"
STATE_NAME = "state.json"
ADAPTER_NAME = "adapter.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"
VALIDATION_NAME = "validation.jpg"
_STEP_DIR = re.compile(r"^checkpoints/step-(\d{6,})/" + re.escape(STATE_NAME) + "$")


def step_dir(step: int) -> str:
    return f"{CHECKPOINTS}step-{step:06d}/"


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint restores: tensors by name, plus the record of the run so far."""

    step: int
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    generator: Any
    record: TrainingRecord
    scaler: dict[str, Any] | None


def save_checkpoint(
    where: Location,
    *,
    step: int,
    lora_file: bytes,
    adapter: dict[str, Any],
    optimizer: dict[str, Any],
    generator: Any,
    record: TrainingRecord,
    scaler: dict[str, Any] | None = None,
    validation: bytes | None = None,
) -> str:
    """Write one checkpoint (``state.json`` last); returns its folder's key."""
    from safetensors.torch import save

    folder = step_dir(step)
    where.put(folder + LORA_NAME, lora_file)
    where.put(folder + ADAPTER_NAME, save({k: v.detach().contiguous().cpu() for k, v in adapter.items()}))
    tensors, meta = _flatten_optimizer(optimizer)
    tensors["generator"] = generator
    where.put(folder + OPTIMIZER_NAME, save(tensors))
    if validation is not None:
        where.put(folder + VALIDATION_NAME, validation, content_type="image/jpeg")
    state = {"step": step, "optimizer": meta, "scaler": scaler,
             "record": json.loads(record.model_dump_json(by_alias=True))}
    where.put(folder + STATE_NAME, json.dumps(state, indent=2).encode(), content_type="application/json")
    return where.key(folder)


def checkpoint_steps(where: Location) -> list[int]:
    """Steps of every complete checkpoint, ascending."""
    steps = []
    for name, _ in where.names(CHECKPOINTS):
        match = _STEP_DIR.match(name)
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_checkpoint(where: Location, step: int) -> TrainingState:
    from safetensors.torch import load

    folder = step_dir(step)
    state = json.loads(where.get(folder + STATE_NAME))
    tensors = load(where.get(folder + OPTIMIZER_NAME))
    generator = tensors.pop("generator")
    return TrainingState(step=state["step"], adapter=load(where.get(folder + ADAPTER_NAME)),
                         optimizer=_unflatten_optimizer(tensors, state["optimizer"]), generator=generator,
                         record=TrainingRecord.model_validate(state["record"]), scaler=state.get("scaler"))


def prune(where: Location, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` complete checkpoints (their state.json last goes first,
    so a crash mid-delete never leaves a checkpoint that looks complete but is not)."""
    steps = checkpoint_steps(where)
    removed = steps[:-keep] if keep > 0 else []
    for step in removed:
        folder = step_dir(step)
        where.delete(folder + STATE_NAME)
        for name, _ in list(where.names(folder)):
            where.delete(name)
    return removed


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``torch.optim`` state as named tensors plus JSON (param groups, non-tensor values)."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
