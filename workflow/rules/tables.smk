# Tables rendered the way the paper prints them, as tidy CSV and booktabs LaTeX.

FINAL_TARGETS.extend(
    f"results/{name}.{ext}" for name in config["tables"] for ext in ("csv", "tex")
)


rule table:
    input:
        table_inputs,
    output:
        csv="results/{table}.csv",
        tex="results/{table}.tex",
    log:
        "logs/table/{table}.log",
    wildcard_constraints:
        table="|".join(config["tables"]) or "no-tables",
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/table.py"
