"""The paper's figures from this run's results, as configured under ``figures:``.

Config (``figures.<figureN>``):
  kind: similarity      Figure 1 (models; ``calibration`` set, default ``capture.calibration``)
  kind: kdp_training    Figure 3 (models; ``variant``, default ``kdp``): Step 1 and Step 2 curves of every block fit
  kind: kernel_space    Figure 4 (models, ``variant``): predicted against true kernel features, one held-out sample
  kind: operator_norms  Figure 5 (models, ``variant``): the Theorem 1 quantities over Step 1
  kind: ratio_sweep     Figures 6-7 (models, variants, benchmarks): variants at several ``target_ratio``s, grouped
                        into lines by their label
  kind: kernel_size     Figure 8 (models, variants, benchmarks): KDP variants differing in ``fit.rff_dim``
Each figure is ``results/figures/<figureN>.png`` and ``.pdf``. ``check_figures`` runs when the workflow loads, so
a figure that names an unknown model or variant, a training figure of a variant without kernel fits, or a kernel
sweep whose 2m a model override pins, fails in one line before any job starts. Figures 3-5 are drawn by
``kdp.figures.kdp_fits`` from the block fits of their variant (`fit_variant`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kdp.errors import UserError

KINDS = ("similarity", "kdp_training", "kernel_space", "operator_norms", "ratio_sweep", "kernel_size")
FIT_KINDS = ("kdp_training", "kernel_space", "operator_norms")  # drawn from block fits (kdp.figures.kdp_fits)
DEFAULT_FIT_VARIANT = "kdp"
DEFAULT_RFF_DIM = 1024  # kdp.linearize.KDPConfig.rff_dim, the paper's 2m (Appendix B)


def figure_paths(name: str) -> dict[str, str]:
    return {"png": f"results/figures/{name}.png", "pdf": f"results/figures/{name}.pdf"}


def rff_dim(config: dict, variant: str, model: str) -> int:
    from kdp.registry import resolve_params

    _, params = resolve_params(config, variant, model)
    return int(params.get("fit", {}).get("rff_dim", DEFAULT_RFF_DIM))


def similarity_set(config: dict, spec: Mapping[str, Any]) -> str:
    return spec.get("calibration") or config["capture"]["calibration"]


def fit_variant(spec: Mapping[str, Any]) -> str:
    """The KDP variant whose block fits Figures 3-5 draw."""
    return spec.get("variant") or DEFAULT_FIT_VARIANT


# ------------------------------------------------------------------------------------------------ config checks


def check_figures(config: dict) -> None:
    """One-line `UserError` for the first figure entry the workflow could not draw."""
    for name, spec in config.get("figures", {}).items():
        where = f"config key figures.{name}"
        _check_names(spec.get("models", []), config["models"], f"{where}.models", "model")
        if spec["kind"] == "similarity":
            calibration = similarity_set(config, spec)
            if calibration not in config["calibration"]:
                raise UserError(f"{where}.calibration: {calibration!r} is not a calibration set; "
                                f"allowed: {', '.join(config['calibration'])}")
            continue
        if spec["kind"] in FIT_KINDS:
            _check_fit_variant(config, spec, where)
            continue
        for key in ("variants", "benchmarks"):
            if not spec.get(key):
                raise UserError(f"{where}: kind {spec['kind']!r} needs {key}; allowed: a non-empty list")
        _check_names(spec["variants"], config["variants"], f"{where}.variants", "variant")
        _check_benchmarks(config, spec, where)
        if spec["kind"] == "kernel_size":
            _check_kernel_sweep(config, spec, where)


def _check_fit_variant(config: dict, spec: Mapping[str, Any], where: str) -> None:
    from kdp.registry import resolve_params

    variant = fit_variant(spec)
    _check_names([variant], config["variants"], f"{where}.variant", "variant")
    for model in spec["models"]:
        cls, params = resolve_params(config, variant, model)
        if cls.name != "kdp" or params.get("fold") != "kernel":
            raise UserError(f"{where}.variant: {variant!r} has no KDP kernel fits on {model!r} (method "
                            f"{cls.name!r}, fold {params.get('fold')!r}); allowed: a kdp variant with fold: kernel")


def _check_names(names: Sequence[str], known: Mapping[str, Any], where: str, what: str) -> None:
    for item in names:
        if item not in known:
            raise UserError(f"{where}: {item!r} is not a configured {what}; allowed: {', '.join(known)}")


def _check_benchmarks(config: dict, spec: Mapping[str, Any], where: str) -> None:
    for variant in spec["variants"]:
        evaluated = config["variants"][variant].get("benchmarks") or config["evaluation"]["benchmarks"]
        for benchmark in spec["benchmarks"]:
            if benchmark not in evaluated:
                raise UserError(f"{where}.benchmarks: {benchmark!r} is not evaluated for variant {variant!r}; "
                                f"allowed: {', '.join(evaluated)}")


def _check_kernel_sweep(config: dict, spec: Mapping[str, Any], where: str) -> None:
    for variant in spec["variants"]:
        if config["variants"][variant]["method"] != "kdp":
            raise UserError(f"{where}.variants: {variant!r} is a {config['variants'][variant]['method']!r} variant; "
                            "allowed: kdp variants (the sweep varies fit.rff_dim)")
    for model in spec["models"]:
        dims = [rff_dim(config, v, model) for v in spec["variants"]]
        if len(set(dims)) < len(dims):
            raise UserError(f"{where}.models: {model!r} gives the same 2m to several variants ({dims}), e.g. via "
                            f"models.{model}.overrides.kdp.fit.rff_dim; allowed: models whose 2m the variants set")


# --------------------------------------------------------------------------------------------- inputs and step


def figure_inputs(config: dict, name: str) -> list[str]:
    """Inputs of every kind except `FIT_KINDS`, whose block fits the workflow lists after block selection."""
    spec = config["figures"][name]
    if spec["kind"] == "similarity":
        return [f"results/similarity/{m}/{similarity_set(config, spec)}.npz" for m in spec["models"]]
    return [f"results/eval/{m}/{v}.json" for m in spec["models"] for v in spec["variants"]]


def draw_figure(config: dict, name: str, inputs: Sequence[str], out_png: str, out_pdf: str) -> None:
    """Rule ``figure``: draw ``figures.<name>`` from its inputs (in `figure_inputs` order)."""
    from kdp.config import model_label, variant_label
    from kdp.io import read_json
    from kdp.provenance import provenance

    spec = config["figures"][name]
    record = provenance(config, config["seed"], figure=name, kind=spec["kind"])
    title = spec.get("title", "")
    labels = {m: model_label(config, m) for m in spec["models"]}
    if spec["kind"] == "similarity":
        from kdp.figures.similarity import plot_similarity

        plot_similarity(dict(zip(labels.values(), inputs)), out_png, out_pdf, title, record)
        return
    if spec["kind"] in FIT_KINDS:
        from pathlib import Path

        from kdp.figures.kdp_fits import draw_fit_figure

        # inputs are results/kdp/{model}/{variant}/block_*: the model is two levels up
        fits = {labels[m]: [d for d in inputs if Path(d).parent.parent.name == m] for m in spec["models"]}
        draw_fit_figure(spec["kind"], fits, {"png": out_png, "pdf": out_pdf}, title, record)
        return
    evals = [read_json(path) for path in inputs]
    if spec["kind"] == "ratio_sweep":
        from kdp.figures.ratio_sweep import plot_ratio_sweep

        methods = {v: config["variants"][v]["method"] for v in spec["variants"]}
        variant_labels = {v: variant_label(config, v) for v in spec["variants"]}
        plot_ratio_sweep(evals, spec["benchmarks"], methods, variant_labels, labels, out_png, out_pdf, title, record)
        return
    from kdp.figures.kernel_size import plot_kernel_size

    dims = {(e["model"], e["variant"]): rff_dim(config, e["variant"], e["model"]) for e in evals}
    plot_kernel_size(evals, dims, spec["benchmarks"], labels, out_png, out_pdf, title, record)
