"""LoRA recovery training, shared by every method with a fine-tuned (†) row.

SliceGPT's RFT, LLM-Pruner's recovery, Streamline's fine-tuned variant and KDP+PEFT differ only in which linears
carry LoRA, the loss (next-token cross-entropy, optionally mixed with KL to the dense teacher) and the schedule,
so each passes a `FinetuneRecipe` and the list of target linears it chose through the adapter. The adapters are
merged into the weights afterwards: the pruned structure is unchanged and there is no runtime overhead.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kdp.calibration import CalibrationSet
from kdp.errors import bad_value


@dataclass
class FinetuneRecipe:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup: float = 0.03  # fraction of optimiser steps (an int >= 1 means a step count)
    schedule: str = "cosine"  # cosine | linear | constant
    clip: float = 1.0
    kd_weight: float = 0.0  # lambda of lambda * KL(teacher || student) + (1 - lambda) * CE
    temperature: float = 1.0
    eval_every: int = 16
    patience: int | None = 5  # evaluations without validation improvement before stopping
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any], seed: int) -> "FinetuneRecipe":
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        return cls(**{**known, "seed": seed})


#: FinetuneRecipe fields a method's recovery recipe may not set: the seed is the run's, and distillation is KDP's own.
METHOD_OWNED = frozenset({"seed", "extra", "kd_weight", "temperature"})


def recovery_recipe(configured: dict[str, Any] | None, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """A baseline's recovery recipe: its ``defaults`` with the configured keys over them; a key that is neither a
    default nor a `FinetuneRecipe` field the method leaves to the config is refused."""
    allowed = recovery_keys(defaults)
    unknown = sorted(set(configured or {}) - allowed)
    if unknown:
        raise bad_value(f"{where} recovery keys", unknown, sorted(allowed))
    return {**defaults, **(configured or {})}


def recovery_keys(defaults: dict[str, Any]) -> set[str]:
    return set(defaults) | ({f.name for f in fields(FinetuneRecipe)} - METHOD_OWNED)


def recover(model: nn.Module, targets: Sequence[nn.Linear], train: CalibrationSet, validation: CalibrationSet,
            recipe: dict[str, Any], seed: int, log=None) -> tuple[dict[str, Any], dict[str, int]]:
    """LoRA recovery of a pruned model with a baseline's recipe: the training history, and the samples it consumed
    by purpose (Table 8)."""
    history = lora_finetune(model, targets, train, validation, FinetuneRecipe.from_params(recipe, seed), log=log)
    samples = {"recovery_train": min(history["train_samples_seen"], train.num_samples),
               "recovery_validation": validation.num_samples}
    return history, samples


def lora_finetune(
    model: nn.Module,
    targets: Sequence[nn.Linear],
    train: CalibrationSet,
    validation: CalibrationSet,
    recipe: FinetuneRecipe,
    teacher: nn.Module | None = None,
    log=None,
) -> dict[str, Any]:
    """Train LoRA adapters on ``targets`` (modules of ``model``), keep the best validation state, merge in place."""
    from peft import LoraConfig, inject_adapter_in_model

    names = _module_names(model, targets)
    torch.manual_seed(recipe.seed)
    for param in model.parameters():
        param.requires_grad_(False)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout, target_modules=names)
    inject_adapter_in_model(config, model)
    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    for param in lora_params:
        param.requires_grad_(True)
    if recipe.kd_weight > 0 and teacher is None:
        raise ValueError("kd_weight > 0 needs the dense teacher")
    history = _train(model, lora_params, train, validation, recipe, teacher, log)
    _merge_lora(model)
    model.eval()
    return {"recipe": asdict(recipe), "targets": names, "trainable_parameters": sum(p.numel() for p in lora_params),
            **history}


def _module_names(model: nn.Module, targets: Sequence[nn.Module]) -> list[str]:
    wanted = {id(t) for t in targets}
    names = [name for name, module in model.named_modules() if id(module) in wanted]
    if len(names) != len(wanted):
        raise ValueError("some LoRA targets are not modules of the model")
    return names


def _train(model, params, train, validation, recipe, teacher, log) -> dict[str, Any]:
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(train.num_samples / (recipe.batch_size * recipe.grad_accum))
    total_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(recipe, total_steps))
    generator = torch.Generator().manual_seed(recipe.seed)
    history: dict[str, list] = {"train_loss": [], "validation_ppl": [], "eval_steps": []}
    best = (validation_perplexity(model, validation, recipe.batch_size), _lora_state(model), 0)
    history["validation_ppl"].append(best[0])
    history["eval_steps"].append(0)
    stale = 0
    model.train()
    batches = _batches(train, recipe.batch_size, generator)
    for step in tqdm(range(1, total_steps + 1), desc="LoRA recovery", unit="step"):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for _ in range(recipe.grad_accum):
            ids, mask = next(batches)
            loss = _loss(model, teacher, ids.to(device), mask.to(device), recipe) / recipe.grad_accum
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, recipe.clip)
        optimizer.step()
        scheduler.step()
        history["train_loss"].append(loss_sum)
        if step % recipe.eval_every == 0 or step == total_steps:
            ppl = validation_perplexity(model, validation, recipe.batch_size)
            model.train()
            history["validation_ppl"].append(ppl)
            history["eval_steps"].append(step)
            if log:
                log.info("LoRA step %d: train loss %.4f, validation ppl %.3f", step, loss_sum, ppl)
            if ppl < best[0]:
                best, stale = (ppl, _lora_state(model), step), 0
            else:
                stale += 1
                if recipe.patience is not None and stale >= recipe.patience:
                    break
    model.load_state_dict(best[1], strict=False)
    history["best_step"] = best[2]
    history["best_validation_ppl"] = best[0]
    history["steps"] = len(history["train_loss"])
    history["train_samples_seen"] = history["steps"] * recipe.batch_size * recipe.grad_accum
    return history


def _batches(train: CalibrationSet, batch_size: int, generator: torch.Generator):
    while True:
        order = torch.randperm(train.num_samples, generator=generator)
        for start in range(0, train.num_samples - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            yield train.input_ids[rows], train.attention_mask[rows]


def _schedule(recipe: FinetuneRecipe, total: int):
    warmup = int(recipe.warmup) if recipe.warmup >= 1 else int(round(recipe.warmup * total))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if recipe.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def _loss(model, teacher, ids, mask, recipe: FinetuneRecipe) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:]
    valid = mask[:, 1:].bool()
    ce = F.cross_entropy(logits[valid], targets[valid])
    if recipe.kd_weight <= 0:
        return ce
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][valid]
    t = recipe.temperature
    kl = F.kl_div(F.log_softmax(logits[valid] / t, -1), F.log_softmax(teacher_logits / t, -1),
                  log_target=True, reduction="batchmean") * t * t
    return recipe.kd_weight * kl + (1 - recipe.kd_weight) * ce


@torch.no_grad()
def validation_perplexity(model: nn.Module, data: CalibrationSet, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, mask in data.batches(batch_size):
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        valid = mask[:, 1:].bool()
        total += float(F.cross_entropy(logits[valid], ids[:, 1:][valid], reduction="sum"))
        count += int(valid.sum())
    model.train(was_training)
    return math.exp(total / count)


def _lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _merge_lora(model: nn.Module) -> None:
    """Fold every LoRA layer into its base linear and put the plain linear back in its place."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            base = copy.copy(module.get_base_layer())
            base.weight.requires_grad_(False)
            setattr(parent, child, base)
