# Tables rendered the way the paper prints them, as tidy CSV and booktabs LaTeX. Each table's kind says which
# results it reads (kdp.table_kinds), so a table waits only for those.
from kdp.table_kinds import input_function as table_input_function

FINAL_TARGETS.extend(
    f"results/{name}.{ext}" for name in config["tables"] for ext in ("csv", "tex")
)


rule table:
    input:
        unpack(table_input_function(config)),
    output:
        csv="results/{table}.csv",
        tex="results/{table}.tex",
    params:
        settings=table_settings,
    log:
        "logs/table/{table}.log",
    wildcard_constraints:
        table="|".join(config["tables"]) or "no-tables",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/table.py"
