"""Configuration: schema validation with defaults, then the checks a schema cannot express.

Errors are one line naming the config key, the bad value and what is allowed. The same schema file is also
passed to Snakemake's ``validate`` in the workflow, so both agree on defaults.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kdp.errors import UserError
from kdp.sources import ModelSource

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load(path: str | Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"{path}: cannot read the config ({str(error).splitlines()[0]})") from error
    return validate(config or {})


def typed_as_in_a_file(values: Any) -> Any:
    """``--config`` values typed as the same text in a config file would be. Snakemake reads them with YAML's base
    loader, which leaves every nested scalar a string (``seeds=[0,1]`` gives ``['0', '1']``, ``null`` gives
    ``'null'``); a scalar string is read again with the safe loader a config file goes through."""
    if isinstance(values, dict):
        return {key: typed_as_in_a_file(value) for key, value in values.items()}
    if isinstance(values, list):
        return [typed_as_in_a_file(value) for value in values]
    if not isinstance(values, str):
        return values
    try:
        typed = yaml.safe_load(values)
    except yaml.YAMLError:
        return values
    return values if isinstance(typed, (dict, list)) else typed


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Return a copy with schema defaults filled in; raise `UserError` on the first problem, every variant's
    hyperparameters on every model included (by resolving the experiment, `kdp.experiment`)."""
    from kdp.experiment import Experiment

    return Experiment.from_config(config).config


def check(config: dict[str, Any]) -> dict[str, Any]:
    """The schema (a copy with its defaults filled in) and the checks across keys; the methods' hyperparameters are
    checked where `kdp.experiment` resolves them."""
    config = copy.deepcopy(config)
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise UserError(_describe(errors[0], schema))
    _fill_defaults(config, schema, schema)
    config.setdefault("seeds", [config["seed"]])
    _check_semantics(config)
    return config


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    validator = error.validator
    if validator == "enum":
        return f"config key {key}: {error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if validator in ("exclusiveMinimum", "exclusiveMaximum", "minimum", "maximum"):
        bounds = _bounds(error.schema)
        return f"config key {key}: {error.instance!r} is out of range; allowed: {bounds}"
    if validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {}))) or "none"
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"config key {key}: unknown key(s) {', '.join(extra)}; allowed: {allowed}"
    if validator in ("minItems", "minLength"):
        unit = "item" if validator == "minItems" else "character"
        return f"config key {key}: {error.instance!r} is too short; allowed: at least {error.validator_value} {unit}(s)"
    if validator == "uniqueItems":
        return f"config key {key}: {error.instance!r} repeats a value; allowed: distinct values"
    if validator == "required":
        return f"config key {key}: {error.message}"
    if validator == "pattern" and error.path and error.path[-1] == "source":
        return f"config key {key}: {error.instance!r} is not a model source; allowed: embedded:<name>, hub:<id>, path:<dir>"
    return f"config key {key}: {error.message}"


def _bounds(schema: dict) -> str:
    low = ("> " + str(schema["exclusiveMinimum"])) if "exclusiveMinimum" in schema else (
        (">= " + str(schema["minimum"])) if "minimum" in schema else "")
    high = ("< " + str(schema["exclusiveMaximum"])) if "exclusiveMaximum" in schema else (
        ("<= " + str(schema["maximum"])) if "maximum" in schema else "")
    return " and ".join(part for part in (low, high) if part)


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    if "$ref" in schema:
        schema = _resolve(schema["$ref"], root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def _resolve(ref: str, root: dict) -> dict:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _check_semantics(config: dict[str, Any]) -> None:
    from kdp.registry import import_method_modules, method_spec
    from kdp.tasks import check_benchmarks

    for name, spec in config["models"].items():
        ModelSource.parse(spec["source"], f"config key models.{name}.source")
    import_method_modules(config.get("method_modules", []))
    for variant, entry in config["variants"].items():
        method_spec(entry["method"], f"config key variants.{variant}.method")
    if "base" in config["variants"]:
        raise UserError("config key variants.base: 'base' is reserved for the unpruned base model; allowed: any other name")
    calibration = config["capture"]["calibration"]
    if calibration not in config["calibration"]:
        raise UserError(f"config key capture.calibration: {calibration!r} is not a calibration set; "
                        f"allowed: {', '.join(config['calibration'])}")
    for model in config["selection"]["blocks"]:
        if model not in config["models"]:
            raise UserError(f"config key selection.blocks.{model}: unknown model; allowed: {', '.join(config['models'])}")
    check_benchmarks(config["evaluation"]["suite"], config["evaluation"]["benchmarks"], "config key evaluation.benchmarks")
    for variant, entry in config["variants"].items():
        extra = sorted(set(entry.get("benchmarks", [])) - set(config["evaluation"]["benchmarks"]))
        if extra:
            raise UserError(f"config key variants.{variant}.benchmarks: {extra[0]!r} is not in evaluation.benchmarks; "
                            f"allowed: {', '.join(config['evaluation']['benchmarks'])}")
    for table, spec in config["tables"].items():
        for model in spec["models"]:
            if model not in config["models"]:
                raise UserError(f"config key tables.{table}.models: {model!r} is not a configured model; "
                                f"allowed: {', '.join(config['models'])}")
        for variant in spec["variants"]:
            if variant not in config["variants"]:
                raise UserError(f"config key tables.{table}.variants: {variant!r} is not a configured variant; "
                                f"allowed: {', '.join(config['variants'])}")
        _check_table_extras(config, table, spec)


def _check_table_extras(config: dict[str, Any], table: str, spec: dict[str, Any]) -> None:
    extra = sorted(set(spec.get("benchmarks", [])) - set(config["evaluation"]["benchmarks"]))
    if extra:
        raise UserError(f"config key tables.{table}.benchmarks: {extra[0]!r} is not in evaluation.benchmarks; "
                        f"allowed: {', '.join(config['evaluation']['benchmarks'])}")
    if "reference" in spec and spec["reference"] not in spec["variants"]:
        raise UserError(f"config key tables.{table}.reference: {spec['reference']!r} is not a row of the table; "
                        f"allowed: {', '.join(spec['variants'])}")
    if spec["kind"] == "block_cost" and config["variants"][spec["variants"][0]]["method"] != "kdp":
        raise UserError(f"config key tables.{table}.variants: {spec['variants'][0]!r} is not a KDP variant; allowed: "
                        + ", ".join(v for v, e in config["variants"].items() if e["method"] == "kdp"))


def variant_label(config: dict[str, Any], variant: str) -> str:
    return config["variants"][variant].get("label", variant)


def model_label(config: dict[str, Any], model: str) -> str:
    return config["models"][model].get("label", model)
