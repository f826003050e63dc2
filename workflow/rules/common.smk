# Configuration checks, wildcard constraints and the input functions every rule uses.
import os
import sys

from snakemake.utils import update_config, validate

from kdp.config import typed_as_in_a_file
from kdp.errors import UserError
from kdp.experiment import Experiment, run_name
from kdp.figures import FIT_KINDS, figure_inputs, fit_variant
from kdp.prefetch import (
    COMMAND_VARIABLE,
    HUB_SUITES,
    OFFLINE_SWITCHES,
    calibration_rows,
    calibration_set_sources,
    hub_models,
)

# `--config seeds=[0,1]` means what `seeds: [0, 1]` means in a config file (Snakemake alone would give ['0', '1']).
update_config(config, typed_as_in_a_file(workflow.config_settings.overwrite_config))

try:
    # The experiment, resolved once: every run of every variant on every model with its method, hyperparameters,
    # seed and target ratio. A bad config gets one clear line (the key, the value, what is allowed) here, before
    # Snakemake's own validation and before any job.
    EXPERIMENT = Experiment.from_config(config)
except UserError as error:
    sys.stderr.write(f"kdp-bench: {error}\n")
    sys.exit(1)
config.update(EXPERIMENT.config)

validate(config, "../schemas/config.schema.yaml")

MODELS = list(config["models"])
VARIANTS = list(config["variants"])
# A stochastic variant is built once per entry of `seeds`: the first seed under the variant's name, each further
# seed s as the run `{variant}~s{s}` through fit_block, prune and evaluate (kdp.experiment).
RUNS = EXPERIMENT.run_names
CAPTURE_CALIBRATION = config["capture"]["calibration"]
# Every report rule file adds its final outputs here; `rule all` builds them all.
FINAL_TARGETS = []


wildcard_constraints:
    model="|".join(MODELS),
    variant="|".join(RUNS),
    calibration="|".join(config["calibration"]),
    block=r"block_\d+_\d+",


# Snakemake reruns a job when its code, inputs or params change, never when only the config does. Each rule's
# `params: settings=` is a digest of the config it reads, so a changed key (max_length, seed, a method setting)
# rebuilds the outputs built for the old one instead of silently reusing them.
def _digest(*values):
    from kdp.io import sha256_json

    return sha256_json([config["seed"], *values])[:16]


def model_settings(wildcards):
    return _digest(config["models"][wildcards.model])


def calibration_settings(wildcards):
    return _digest(config["calibration"][wildcards.calibration])


def capture_settings(wildcards):
    return _digest(config["capture"], config["runtime"])


def similarity_settings(wildcards):
    return _digest(config["similarity"])


def variant_settings(wildcards):
    run = EXPERIMENT.run(wildcards.model, wildcards.variant)
    # `seed` is in every digest already; a run with another seed adds its own (today's digests stay as they were)
    own_seed = [] if run.seed == config["seed"] else [run.seed]
    return _digest(config["runtime"], config["selection"], run.target_ratio, run.params, *own_seed)


def tasks_settings(wildcards):
    return _digest(config["evaluation"]["suite"], config["evaluation"]["benchmarks"])


def evaluation_settings(wildcards):
    benchmarks = config["variants"][EXPERIMENT.run(wildcards.model, wildcards.variant).variant].get("benchmarks")
    return _digest(config["runtime"], config["evaluation"], benchmarks)


def table_settings(wildcards):
    # Titles and labels are printed, so a change to either re-renders the table.
    spec = config["tables"][wildcards.table]
    labels = [config["models"][m].get("label") for m in spec["models"]]
    return _digest(spec, labels, [config["variants"][v] for v in spec["variants"]])


def calibration_file(model, name):
    return f"results/calib/{model}/{name}.safetensors"


def hidden_dir(model, calibration):
    return f"results/hidden/{model}/{calibration}"


def method_inputs(wildcards, with_fits=True):
    """The files a variant's method consumes, from what its class declares in ``requires``."""
    run = EXPERIMENT.run(wildcards.model, wildcards.variant)
    requires, params = run.spec.requires, run.params
    # A variant may reuse another variant's blocks and per-block fits (e.g. KDP+PEFT reuses KDP's folds, seed by
    # seed). The block choice draws nothing at random, so every seed's run shares the variant's.
    fitted = run.fitted_variant
    inputs = {"base": f"results/models/{wildcards.model}/base"}
    if "calibration" in requires or "hidden_states" in requires:
        inputs["calibration"] = calibration_file(wildcards.model, params["calibration"])
    if "hidden_states" in requires:
        inputs["hidden"] = hidden_dir(wildcards.model, params["calibration"])
    if "blocks" in requires or "block_fits" in requires:
        inputs["blocks"] = f"results/blocks/{wildcards.model}/{fitted}.json"
    if with_fits and run.spec.fits_blocks:
        inputs["block_fits"] = block_fit_dirs(wildcards.model, fitted, run_name(config, fitted, run.seed))
    return inputs


def fit_inputs(wildcards):
    return method_inputs(wildcards, with_fits=False)


def block_fit_dirs(model, variant, run=None):
    """The block fits of a variant's run (default: its first seed's), one per block the variant chose."""
    from kdp.selection import read_blocks

    blocks_json = checkpoints.select_blocks.get(model=model, variant=variant).output[0]
    return [f"results/kdp/{model}/{run or variant}/{block.tag}" for block in read_blocks(blocks_json)]


# -- resources sized from the model ----------------------------------------------------------------------------
# Rules declare only portable resources (gpu, mem_mb, runtime); their sizes follow the model's parameter count
# from its config json (kdp.flops), so a 13B job asks for more than a 2.7B one and a micro model for little.
# A retried job (--retries) asks for proportionally more memory and time.
MODEL_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


def model_config_json(model):
    """The model's transformers config: resources/model_configs/{model}.json, a path source, or the built base."""
    from pathlib import Path

    from kdp.flops import load_model_config, model_config_keys

    if model in model_config_keys():
        return load_model_config(model)
    kind, _, ref = config["models"][model]["source"].partition(":")
    for directory in [Path(ref)] * (kind == "path") + [Path(f"results/models/{model}/base")]:
        if (directory / "config.json").is_file():
            return load_model_config("config", directory)
    return None  # an embedded model not built yet: small by construction, the floors apply


def model_parameters(model):
    """(all parameters, the largest single piece the capture holds: one decoder layer or the embeddings)."""
    from kdp.flops import layer_parameters, model_parameters as count

    model_config = model_config_json(model)
    if model_config is None:
        return 0, 0
    embeddings = model_config.vocab_size * model_config.hidden_size
    return count(model_config), max(layer_parameters(model_config), embeddings)


def sized_mem_mb(floor_mb, model_copies=0.0, piece_copies=0.0):
    """mem_mb: a floor plus copies of the whole model (runtime dtype) or of the capture's largest piece (fp32)."""

    def mem_mb(wildcards, attempt):
        whole, piece = model_parameters(wildcards.model)
        weights = model_copies * whole * MODEL_BYTES[config["runtime"]["dtype"]] + piece_copies * piece * 4
        return attempt * (floor_mb + int(weights / 2**20))

    return mem_mb


def sized_runtime(floor_minutes, minutes_per_billion):
    """runtime in minutes: a floor plus a share proportional to the parameter count."""

    def runtime(wildcards, attempt):
        whole, _ = model_parameters(wildcards.model)
        return attempt * (floor_minutes + int(minutes_per_billion * whole / 1e9))

    return runtime


# -- hub assets (rules in prefetch.smk) ---------------------------------------------------------------------------
# Jobs never reach the hub (a job whose asset is missing names it and the prefetch command); the prefetch script
# switches this off for itself. Export HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to let jobs download anyway.
for switch in OFFLINE_SWITCHES:
    os.environ.setdefault(switch, "1")
os.environ[COMMAND_VARIABLE] = "snakemake prefetch" + "".join(
    f" --configfile={path}" for path in workflow.overwrite_configfiles
)

HUB_MODELS = hub_models(config)
CALIBRATION_ROWS = calibration_rows(config)
EVALUATION_ON_HUB = config["evaluation"]["suite"] in HUB_SUITES


def model_asset(wildcards):
    """{"asset": record} for a hub model (rule base_model), nothing for embedded and path models."""
    if wildcards.model not in HUB_MODELS:
        return {}
    return {"asset": f"results/prefetch/models/{wildcards.model}.json"}


def calibration_assets(wildcards):
    return [
        f"results/prefetch/calibration/{source}.json"
        for source in calibration_set_sources(config, wildcards.calibration)
    ]


def evaluation_assets(wildcards):
    return ["results/prefetch/evaluation.json"] if EVALUATION_ON_HUB else []


# -- calibration sizing (rules in calibration.smk) ------------------------------------------------------------------
def calibration_read(wildcards, input):
    """(largest row group, bytes of all files) the job reads, from the prefetch records; None before they exist."""
    from pathlib import Path

    from kdp.prefetch import read_bytes

    if not all(Path(record).is_file() for record in input.sources):
        return None
    return read_bytes(input.sources)


def calibration_tokens(wildcards):
    spec = config["calibration"][wildcards.calibration]
    return sum(int(source["samples"]) for source in spec["sources"]) * int(spec["max_length"])


# Sized from what the job reads: the largest parquet row group it holds (three copies: arrow, Python rows, texts)
# and about 64 bytes per token kept (Python lists of ids, then the int64 tensors); about 100 MB of parquet and
# 5 M tokens a minute. Before the prefetch records exist (a dry run) the sizes are <TBD>.
def calibration_mem_mb(wildcards, input, attempt):
    from snakemake.common.tbdstring import TBDString

    read = calibration_read(wildcards, input)
    if read is None:
        return TBDString()
    return attempt * (2000 + int((3 * read[0] + 64 * calibration_tokens(wildcards)) / 2**20))


def calibration_runtime(wildcards, input, attempt):
    from snakemake.common.tbdstring import TBDString

    read = calibration_read(wildcards, input)
    if read is None:
        return TBDString()
    return attempt * (10 + int(read[1] / 100e6 + calibration_tokens(wildcards) / 5e6))


# -- figure inputs (rules in figures.smk) ---------------------------------------------------------------------------
def figure_rule_inputs(wildcards):
    spec = config["figures"][wildcards.figure]
    if spec["kind"] in FIT_KINDS:
        return [d for m in spec["models"] for d in block_fit_dirs(m, fit_variant(spec))]
    return figure_inputs(config, wildcards.figure)
