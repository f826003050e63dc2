"""Audit of a layer-pruning paper against itself: recompute every printed number that other printed numbers
determine, and say which printed number is the likely typo where they disagree.

Why: a reproduction is only meaningful against claims that are internally coherent; and where the paper's own
numbers disagree, the report must say so before blaming (or crediting) a re-run.

Inputs are the tidy CSVs of a claims folder (``resources/claims/`` for the KDP paper; one printed cell per row,
printed decimals kept; ``claims.py`` and docs/audit.md describe the schemas). Each rule yields ``Check``s (a
claimed printed number, the printed inputs it should follow from, and the formula, judged by interval
arithmetic in ``intervals.py``) or ``Finding``s (set, count and ordering comparisons). The modules are the rule
families:

  derived.py      derived columns (Avg, RP, Change, SpeedUp, Retention) and like-for-like RP
  procedures.py   the procedure each derived column follows, inferred from its rows and enforced
  costs.py        FLOPs and parameters against the shipped model configs
  layers.py       pruning ratios from layer spans
  copies.py       copied rows (one evaluation printed twice, two models printing the same row)
  direction.py    sanity of direction (pruned above dense, retention above 100, ratio against layers)
  conventions.py  one symbol counted the same way in every table
  conflicts.py    which printed number the others support where two disagree
  text.py, qualitative.py, restated.py   claims in the prose: numbers, qualitative words, restated cells
  reproduced.py   the join with this project's re-run values (a separate step: it waits for the tables)

``audit_paper(claims_dir)`` returns one tidy row per check (columns ``AUDIT_COLUMNS``).
"""

from kdp.audit.claims import CLAIMS_DIR, SCHEMAS, ClaimsTables, Paper, load_claims, model_config_key
from kdp.audit.intervals import (
    AUDIT_COLUMNS, CONSISTENT, INCONSISTENT, NOT_CHECKABLE, QUESTIONABLE, VERDICTS, Bound, Check, Finding, Printed,
)
from kdp.audit.registry import RULES, run_rules, write_audit
from kdp.audit import derived, costs, layers, copies, direction, conventions  # noqa: F401  (registration order)
from kdp.audit import text, qualitative, conflicts, procedures, restated  # noqa: F401  (reviews of the above)
from kdp.audit.reproduced import REPRODUCED_COLUMNS, Tolerance, attach_reproduced

__all__ = [
    "AUDIT_COLUMNS", "CLAIMS_DIR", "CONSISTENT", "INCONSISTENT", "NOT_CHECKABLE", "QUESTIONABLE", "REPRODUCED_COLUMNS",
    "RULES", "SCHEMAS", "VERDICTS", "Bound", "Check", "ClaimsTables", "Finding", "Paper", "Printed", "Tolerance",
    "attach_reproduced", "audit_paper", "load_claims", "model_config_key", "run_rules", "write_audit",
]


def audit_paper(claims_dir=CLAIMS_DIR):
    """Every rule that applies to the folder's paper, on every table of ``claims_dir``."""
    return run_rules(load_claims(claims_dir))
