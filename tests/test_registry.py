"""The lazy method registry: variants resolve without importing torch or any method's code, each built-in class
carries exactly its spec's declarations, and an installed package adds a method through an entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from kdp import registry
from kdp.errors import UserError
from kdp.registry import BUILTIN_METHODS, PruningMethod, method_spec, register_method, resolve_params
from tests.test_workflow import REPO

CONFIGS = ["config/config.yaml", "config/paper.yaml", "tests/integration/config/config.yaml"]

RESOLVE_EVERY_VARIANT = """
import json, sys
from kdp.config import load
from kdp.registry import resolve_params
resolved = 0
for path in sys.argv[1:]:
    config = load(path)
    for variant in config["variants"]:
        for model in config["models"]:
            spec, params = resolve_params(config, variant, model)
            resolved += bool(spec.name) and isinstance(params, dict)
print(json.dumps({"resolved": resolved, "torch": "torch" in sys.modules,
                  "method_modules": sorted(m for m in sys.modules if m.startswith(("kdp.methods.", "baselines."))
                                           and not m.endswith(".specs"))}))
"""


def _python(code: str, *args: str, pythonpath: str = str(REPO)) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_checking_and_resolving_every_configured_variant_imports_neither_torch_nor_a_method():
    done = _python(RESOLVE_EVERY_VARIANT, *CONFIGS)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["resolved"] > 80  # every variant of the three configs, for each of their models
    assert report["torch"] is False
    assert report["method_modules"] == []


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_each_builtin_class_carries_its_specs_declarations(name):
    spec = method_spec(name, "test")
    cls = spec.load()
    assert cls.name == name and spec.implementation == f"{cls.__module__}:{cls.__qualname__}"
    assert (cls.requires, cls.fits_blocks, cls.defaults) == (spec.requires, spec.fits_blocks, spec.defaults)
    method = spec.build({"x": 1})
    assert isinstance(method, cls) and method.params == {"x": 1}


def test_variant_layers_override_the_spec_defaults():
    config = {"target_ratio": 0.25, "methods": {"sleb": {"batch_size": 4}},
              "models": {"m": {"overrides": {"sleb": {"early_barrier": 2}}}},
              "variants": {"v": {"method": "sleb", "label": "SLEB", "latter_barrier": 3}}}
    spec, params = resolve_params(config, "v", "m")
    assert spec.name == "sleb" and spec.requires == {"calibration"}
    assert params == {**spec.defaults, "batch_size": 4, "early_barrier": 2, "latter_barrier": 3}
    with pytest.raises(UserError, match=r"variants\.v\.latter_barier: unknown parameter of method 'sleb'"):
        resolve_params({**config, "variants": {"v": {"method": "sleb", "latter_barier": 3}}}, "v")


def test_a_builtin_name_belongs_to_its_own_class():
    class Impostor(PruningMethod):
        def prune(self, ctx):
            raise AssertionError

    with pytest.raises(TypeError, match="'sleb' is kdp-bench's baselines.sleb:SLEB"):
        register_method("sleb")(Impostor)
    with pytest.raises(UserError, match="method 'nope' is unknown; allowed: dense, drop_blocks, kdp"):
        method_spec("nope", "variants.x.method")


PLUGIN = '''
from kdp.registry import PruneRecord, PruningMethod


class KeepFirst(PruningMethod):
    """Keep the first n decoder layers (an installed package's method, not decorated)."""

    requires = frozenset()
    defaults = {"keep": 1}

    def prune(self, ctx):
        ctx.adapter.remove_layers(range(self.params["keep"], ctx.adapter.num_layers))
        return PruneRecord()
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry point offers ``keep_first``, as ``pip install`` would leave it."""
    (tmp_path / "kdp_keep_first.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "kdp_keep_first-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdp-keep-first\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nkeep_first = kdp_keep_first:KeepFirst\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._entry_points.cache_clear()
    yield tmp_path
    registry._entry_points.cache_clear()


def test_an_installed_package_adds_a_method_through_its_entry_point(installed_plugin):
    assert "keep_first" in registry.method_names()
    assert "kdp_keep_first" not in sys.modules  # listed from the metadata alone
    config = {"target_ratio": 0.25, "models": {"m": {}},
              "variants": {"first_two": {"method": "keep_first", "label": "First two", "keep": 2}}}
    spec, params = resolve_params(config, "first_two", "m")
    assert spec.implementation == "kdp_keep_first:KeepFirst" and params == {"keep": 2}
    assert spec.load().name == "keep_first"

    done = _python("import sys; from kdp.cli import main; sys.exit(main())", "methods",
                   pythonpath=os.pathsep.join([str(REPO), str(installed_plugin)]))
    assert done.returncode == 0, done.stderr
    assert "keep_first\tthe model only\tkdp_keep_first:KeepFirst" in done.stdout.splitlines()


def test_modules_the_workflow_imports_while_planning_import_no_torch():
    """Snakemake imports these while it parses the rules and calls their input functions: planning the DAG
    (`snakemake -n`) must not pay for torch."""
    imported = set()
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        imported |= set(re.findall(r"^\s*from (kdp[\w.]*) import", rules.read_text(), flags=re.M))
    assert {"kdp.selection", "kdp.table_kinds", "kdp.figures", "kdp.prefetch"} <= imported
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('torch' in sys.modules)"
    done = _python(code, *sorted(imported))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "False"


def test_declared_nested_keys_are_the_ones_the_jobs_accept():
    from typing import get_type_hints

    from baselines import llm_pruner, slicegpt
    from kdp.linearize import KDPConfig
    from kdp.methods.specs import KDP_FIT_TYPES, SELECTION_TYPES
    from kdp.params import _unwrap

    assert KDP_FIT_TYPES == get_type_hints(KDPConfig)
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(SELECTION_TYPES) == set(schema["properties"]["selection"]["properties"])
    for name, module in (("slicegpt", slicegpt), ("llm_pruner", llm_pruner)):
        spec = method_spec(name, "test")
        _, extra = _unwrap(spec.types["recovery"])
        assert set(spec.defaults["recovery"]) | set(extra) == module._RECOVERY_KEYS


@pytest.mark.parametrize("variant, entry, message", [
    ("kdp", {"method": "kdp", "fit": {"rff_dimm": 512}}, "variants.kdp.fit.rff_dimm: unknown key of 'fit' for method 'kdp'"),
    ("kdp", {"method": "kdp", "selection": {"kmax": 3}}, "variants.kdp.selection.kmax: unknown key"),
    ("kdp_peft", {"method": "kdp", "finetune": True, "peft": {"rnak": 4}}, "variants.kdp_peft.peft.rnak: unknown key"),
    ("wo_kernel", {"method": "drop_blocks", "selection": {"max_block": 1}}, "variants.wo_kernel.selection.max_block"),
    ("slicegpt_rft", {"method": "slicegpt", "recovery": {"bach_size": 3}}, "variants.slicegpt_rft.recovery.bach_size"),
    ("llm_pruner_ft", {"method": "llm_pruner", "recovery": {"epoch": 1}}, "variants.llm_pruner_ft.recovery.epoch"),
    ("streamline", {"method": "streamline", "training": {"lr_min": 1e-5}}, "variants.streamline.training.lr_min"),
])
def test_a_misspelt_nested_method_key_fails_when_the_config_loads(variant, entry, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["variants"][variant] = {**entry, "label": "x"}
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_params(config, variant, "smollm2-135m")


@pytest.mark.parametrize("variant, entry, message", [
    ("kdp", {"method": "kdp", "fit": {"rff_dim": "512"}}, "variants.kdp.fit.rff_dim: '512' is not allowed; allowed: an integer"),
    ("kdp", {"method": "kdp", "fold": "kernal"}, "variants.kdp.fold: 'kernal' is not allowed; allowed: one of 'kernel'"),
    ("kdp_peft", {"method": "kdp", "finetune": "yes"}, "variants.kdp_peft.finetune: 'yes' is not allowed; allowed: true or false"),
    ("kdp_peft", {"method": "kdp", "peft": {"lr": "1e-4"}}, "variants.kdp_peft.peft.lr: '1e-4' is not allowed; allowed: a number"),
    ("wo_kernel", {"method": "drop_blocks", "selection": {"k_max": 2.5}}, "variants.wo_kernel.selection.k_max: 2.5"),
    ("laco", {"method": "laco", "threshold": "largest"}, "variants.laco.threshold: 'largest' is not allowed; allowed: a number or one of 'largest_reaching_target'"),
    ("laco", {"method": "laco", "threshold_grid": [0.5, "x"]}, "variants.laco.threshold_grid: [0.5, 'x']"),
    ("shortgpt", {"method": "shortgpt", "angular": 1}, "variants.shortgpt.angular: 1 is not allowed; allowed: true or false"),
    ("sleb", {"method": "sleb", "early_barrier": None}, "variants.sleb.early_barrier: None is not allowed; allowed: an integer"),
    ("slicegpt", {"method": "slicegpt", "slicing": "25%"}, "variants.slicegpt.slicing: '25%' is not allowed; allowed: a number or null"),
    ("slicegpt_rft", {"method": "slicegpt", "recovery": {"max_steps": 1.5}}, "variants.slicegpt_rft.recovery.max_steps: 1.5"),
    ("llm_pruner_ft", {"method": "llm_pruner", "recovery": "default"}, "variants.llm_pruner_ft.recovery: 'default' is not allowed; allowed: a mapping of alpha"),
    ("llm_pruner", {"method": "llm_pruner", "taylor": "vector"}, "variants.llm_pruner.taylor: 'vector' is not allowed; allowed: one of 'param_first', 'vectorize'"),
    ("streamline", {"method": "streamline", "training": {"epochs": "1"}}, "variants.streamline.training.epochs: '1' is not allowed; allowed: an integer"),
    ("streamline_ft", {"method": "streamline", "finetune": "llm"}, "variants.streamline_ft.finetune: 'llm' is not allowed; allowed: one of None, 'llm_loss'"),
])
def test_a_value_of_the_wrong_type_fails_when_the_config_loads(variant, entry, message):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["variants"][variant] = {**entry, "label": "x"}
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_params(config, variant, "smollm2-135m")


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_each_builtin_methods_defaults_pass_its_own_types(name):
    from kdp.params import check_value

    spec = method_spec(name, "test")
    for key, value in spec.defaults.items():
        check_value(value, spec.types[key], f"defaults.{key}", name)


def test_typed_values_that_fit_resolve():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["variants"]["streamline"] = {"method": "streamline", "training": None, "finetune": "llm_loss",
                                        "llm_loss": {"clip": None}, "label": "x"}
    config["variants"]["laco"] = {"method": "laco", "threshold": "largest_reaching_target", "layers_per_merge": 3}
    config["variants"]["slicegpt"] = {"method": "slicegpt", "slicing": None, "recovery": {"epochs": 0.5}}
    assert resolve_params(config, "streamline", "smollm2-135m")[1]["training"] is None
    assert resolve_params(config, "laco", "smollm2-135m")[1]["threshold"] == "largest_reaching_target"
    assert resolve_params(config, "slicegpt", "smollm2-135m")[1]["recovery"]["epochs"] == 0.5


def test_a_method_declared_with_plain_defaults_gets_lenient_types():
    from kdp.params import check_value
    from kdp.registry import MethodSpec

    spec = MethodSpec("x:Y", defaults={"alpha": 1, "mode": "a", "extra": None, "recipe": {"lr": 0.1}})
    check_value(0.5, spec.types["alpha"], "alpha", "x")  # an int default takes any number
    check_value([1], spec.types["extra"], "extra", "x")  # None: anything
    with pytest.raises(UserError, match=r"recipe.lrr: unknown key of 'recipe'"):
        check_value({"lrr": 1}, spec.types["recipe"], "recipe", "x")
    with pytest.raises(UserError, match=r"mode: 3 is not allowed; allowed: text"):
        check_value(3, spec.types["mode"], "mode", "x")


def test_nested_keys_the_defaults_or_the_spec_allow_resolve():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["variants"]["kdp"] = {"method": "kdp", "fit": {"rff_dim": 256, "ols_reinit": "epoch"},
                                 "selection": {"max_blocks": 1}, "label": "x"}
    config["variants"]["llm_pruner_ft"] = {"method": "llm_pruner", "recovery": {"max_steps": 3, "betas": [0.9, 0.95]}}
    assert resolve_params(config, "kdp", "smollm2-135m")[1]["fit"]["rff_dim"] == 256
    assert resolve_params(config, "llm_pruner_ft", "smollm2-135m")[1]["recovery"]["max_steps"] == 3
