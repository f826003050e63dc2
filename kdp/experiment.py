"""The experiment a config describes, resolved once: every build of every variant on every model.

A *run* is one build of a variant on a model: the variant's own name for the first configured seed, and
``{variant}~s{seed}`` for each further seed when the variant's method draws at random with its hyperparameters
(`MethodSpec.draws_at_random`); a deterministic variant is built once. Each run carries its method, hyperparameters
(the method's defaults < ``methods.<method>`` < the variant entry < the model's ``overrides.<method>``,
`kdp.registry.resolve_params`), seed and target ratio.

`Experiment.from_config` checks the config (`kdp.config.check`) and resolves every run, so a misspelt key anywhere,
nested method keys included, fails there with one line before any job runs. The workflow builds it once at parse
time (``EXPERIMENT`` in ``workflow/rules/common.smk``) and takes every run list, input list and settings digest from
it; a job resolves only its own run, through the same `variant_runs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdp.errors import UserError
from kdp.registry import MethodSpec, resolve_params

#: A further seed's build of a variant is the run ``{variant}~s{seed}``; the first seed keeps the variant's own name.
SEED_MARK = "~s"


@dataclass(frozen=True)
class Run:
    model: str
    variant: str
    name: str  # the variant for its first seed, ``{variant}~s{seed}`` for a further one
    seed: int
    spec: MethodSpec
    params: dict[str, Any]
    target_ratio: float

    @property
    def fitted_variant(self) -> str:
        """The variant whose block choice and per-block fits this run reads (KDP+PEFT reuses KDP's folds)."""
        return self.params.get("reuse_fits_of") or self.variant


@dataclass(frozen=True)
class Experiment:
    config: dict[str, Any]
    runs: dict[tuple[str, str], Run]  # (model, run name) -> run

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Experiment:
        """Check ``config`` (a copy with the schema's defaults filled in is kept) and resolve every run."""
        from kdp.config import check

        config = check(config)
        runs = {(run.model, run.name): run for variant in config["variants"] for model in config["models"]
                for run in variant_runs(config, model, variant)}
        for run in runs.values():
            _check_reused_fits(config, run)
        return cls(config, runs)

    @property
    def run_names(self) -> list[str]:
        return list(dict.fromkeys(name for _, name in self.runs))

    def run(self, model: str, name: str) -> Run:
        if (model, name) not in self.runs:
            raise UserError(f"run {name!r} of model {model!r} is not in the experiment; allowed: "
                            + ", ".join(n for m, n in self.runs if m == model))
        return self.runs[(model, name)]


def variant_runs(config: dict[str, Any], model: str, variant: str) -> list[Run]:
    """Every build of ``variant`` on ``model``, first seed first (a single-seed config keeps every path it had)."""
    spec, params = resolve_params(config, variant, model)
    seeds = config["seeds"] if spec.draws_at_random(params) else config["seeds"][:1]
    ratio = float(config["variants"][variant].get("target_ratio", config["target_ratio"]))
    return [Run(model, variant, run_name(config, variant, seed), seed, spec, params, ratio) for seed in seeds]


def resolve_run(config: dict[str, Any], model: str, name: str) -> Run:
    """The run ``name`` (``kdp``, ``kdp~s1``) of ``model``: what a job builds."""
    variant = name.partition(SEED_MARK)[0]
    if variant in config["variants"]:
        for run in variant_runs(config, model, variant):
            if run.name == name:
                return run
    raise UserError(f"run {name!r}: not a configured variant nor one of its seeded runs; allowed: a variant, or "
                    f"<variant>{SEED_MARK}<seed> for a further seed of seeds {config['seeds']} of a variant whose "
                    "method draws at random")


def run_name(config: dict[str, Any], variant: str, seed: int) -> str:
    """The run of a variant built with ``seed``: the variant itself for the first seed."""
    return variant if seed == config["seeds"][0] else f"{variant}{SEED_MARK}{seed}"


def _check_reused_fits(config: dict[str, Any], run: Run) -> None:
    reused = run.params.get("reuse_fits_of")
    method = config["variants"][run.variant]["method"]
    if reused is not None and (reused not in config["variants"] or config["variants"][reused]["method"] != method):
        raise UserError(f"config key variants.{run.variant}.reuse_fits_of: {reused!r} is not a variant of method "
                        f"{method!r}; allowed: " + ", ".join(v for v, e in config["variants"].items()
                                                               if e["method"] == method))
