"""``kdp-bench``: look into an experiment without running it.

    kdp-bench methods                       every method a config may name, what it consumes, where its class is
    kdp-bench variants [--config PATH]      the config's variants: method and label
    kdp-bench show VARIANT [--model M]      a variant's hyperparameters after every config layer is applied, and its
                                            runs: one per seed when its method draws at random, else one (JSON)
    kdp-bench audit [--claims DIR]          the paper's printed numbers checked against each other (CSV on stdout)
    kdp-bench provenance PATH               where a result came from: the provenance its file records

Building anything is Snakemake's job (``snakemake --cores all``); this command only reads. A bad input is one line
on stderr, as in the workflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdp.errors import UserError

DEFAULT_CONFIG = Path("config/config.yaml")
#: Files whose leading comment lines (``#`` or ``%``) are their provenance header.
HEADER_SUFFIXES = (".csv", ".tex")
#: The record a result directory keeps its provenance in (a pruned variant, a base model, a block fit).
DIRECTORY_RECORDS = ("kdp_variant.json", "manifest.json", "record.json")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.command(args)
    except UserError as error:
        sys.stderr.write(f"kdp-bench: {error}\n")
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdp-bench", epilog="Results are built by snakemake (README.md); this command only reads.",
        description="Look into a kdp-bench experiment: its methods and variants, a variant's resolved "
                    "hyperparameters, the claims audit, and where a result came from.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    methods = commands.add_parser("methods", help="every method a config may name")
    methods.add_argument("--config", type=Path, help="also the methods of this config's method_modules")
    methods.set_defaults(command=list_methods)

    variants = commands.add_parser("variants", help="the config's variants")
    _config_option(variants)
    variants.set_defaults(command=list_variants)

    show = commands.add_parser("show", help="a variant's resolved hyperparameters")
    show.add_argument("variant")
    show.add_argument("--model", help="apply this model's overrides too")
    _config_option(show)
    show.set_defaults(command=show_variant)

    audit = commands.add_parser("audit", help="the paper's printed numbers checked against each other")
    audit.add_argument("--claims", type=Path, help="folder of claim tables (default: resources/claims)")
    audit.set_defaults(command=run_audit)

    provenance = commands.add_parser("provenance", help="where a result came from")
    provenance.add_argument("path", type=Path, help="a result file (.json, .csv, .tex) or result directory")
    provenance.set_defaults(command=show_provenance)
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")


def _config(path: Path) -> dict[str, Any]:
    from kdp.config import load

    return load(path)


def list_methods(args: argparse.Namespace) -> None:
    from kdp import registry

    if args.config is not None:
        registry.import_method_modules(_config(args.config).get("method_modules", ()))
    for name in registry.method_names():
        spec = registry.method_spec(name, "kdp-bench methods")
        requires = ", ".join(sorted(spec.requires)) or "the model only"
        print(f"{name}\t{requires}\t{spec.implementation}")


def list_variants(args: argparse.Namespace) -> None:
    from kdp.config import variant_label

    config = _config(args.config)
    for variant, entry in config["variants"].items():
        print(f"{variant}\t{entry['method']}\t{variant_label(config, variant)}")


def show_variant(args: argparse.Namespace) -> None:
    from kdp.errors import bad_value
    from kdp.experiment import variant_runs

    config = _config(args.config)
    if args.variant not in config["variants"]:
        raise bad_value(f"variant (config {args.config})", args.variant, list(config["variants"]))
    if args.model is not None and args.model not in config["models"]:
        raise bad_value(f"--model (config {args.config})", args.model, list(config["models"]))
    runs = variant_runs(config, args.model, args.variant)
    first = runs[0]
    shown = {"variant": args.variant, "method": first.spec.name, "model": args.model,
             "target_ratio": first.target_ratio, "requires": sorted(first.spec.requires), "params": first.params,
             "runs": {run.name: run.seed for run in runs}}
    print(json.dumps(shown, indent=2, sort_keys=True))


def run_audit(args: argparse.Namespace) -> None:
    from kdp.audit import audit_paper

    audit = audit_paper() if args.claims is None else audit_paper(args.claims)
    audit.to_csv(sys.stdout, index=False)
    counts = audit["verdict"].value_counts()
    sys.stderr.write(f"kdp-bench audit: {len(audit)} checks; " + ", ".join(f"{n} {v}" for v, n in counts.items())
                     + "\n")


def show_provenance(args: argparse.Namespace) -> None:
    for line in provenance_lines(args.path):
        print(line)


def provenance_lines(path: Path) -> list[str]:
    """The provenance a result records, as ``key: value`` lines: a JSON result's ``provenance`` record, or a table's
    leading comment lines."""
    allowed = f"a {', '.join(HEADER_SUFFIXES)} or .json result, or a directory with {' or '.join(DIRECTORY_RECORDS)}"
    if path.is_dir():
        records = [path / name for name in DIRECTORY_RECORDS if (path / name).is_file()]
        if not records:
            raise UserError(f"provenance: {path} holds no result record; allowed: {allowed}")
        path = records[0]
    if not path.is_file():
        raise UserError(f"provenance: {path} does not exist; allowed: {allowed}")
    if path.suffix in HEADER_SUFFIXES:
        return _header_lines(path.read_text(encoding="utf-8").splitlines())
    if path.suffix == ".json":
        record = json.loads(path.read_text(encoding="utf-8"))
        provenance = record.get("provenance") if isinstance(record, dict) else None
        if provenance is None:
            raise UserError(f"provenance: {path} records no provenance; allowed: {allowed}")
        return [f"{key}: {json.dumps(value, sort_keys=True)}" for key, value in provenance.items()]
    raise UserError(f"provenance: {path.name} is not a result file kdp-bench reads; allowed: {allowed}")


def _header_lines(lines: list[str]) -> list[str]:
    header = []
    for line in lines:
        if not line.startswith(("#", "%")):
            break
        header.append(line[1:].strip())
    return header


if __name__ == "__main__":
    sys.exit(main())
