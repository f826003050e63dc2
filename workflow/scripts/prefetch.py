# The only scripts that reach the hub: switch the workflow's offline mode off before anything imports
# huggingface_hub (it reads the switches once, at import).
from kdp.prefetch import going_online

going_online()

from kdp import prefetch  # noqa: E402
from kdp.steps import run  # noqa: E402

if snakemake.rule == "prefetch_model":
    run(prefetch.fetch_model, snakemake.log[0], config=snakemake.config, name=snakemake.wildcards.model, repo=snakemake.params.repo,
        revision=snakemake.params.revision, out_json=snakemake.output[0])
elif snakemake.rule == "prefetch_calibration":
    run(prefetch.fetch_calibration_source, snakemake.log[0], config=snakemake.config, name=snakemake.wildcards.source,
        rows_needed=snakemake.params.rows, out_json=snakemake.output[0])
elif snakemake.rule == "prefetch_evaluation":
    run(prefetch.fetch_evaluation, snakemake.log[0], config=snakemake.config, out_json=snakemake.output[0])
else:
    run(prefetch.write_manifest, snakemake.log[0], config=snakemake.config, record_paths=list(snakemake.input),
        out_json=snakemake.output[0])
