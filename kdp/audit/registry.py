"""The rule registry and the runner.

A rule reads the claims tables and yields ``Check``s and ``Finding``s. A review reads other rules' results too
(the procedure a derived column follows, which printed number is the likely typo, which text claim restates
which cell). Each is ``generic`` (it only uses the schemas, so it runs on any paper's folder) or specific to
the KDP paper (its tables' roles, its claim ids); a folder whose ``paper.yaml`` says ``rules: generic`` runs
only the generic ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from kdp.audit.claims import ClaimsTables
from kdp.audit.intervals import AUDIT_COLUMNS, Item, item_row
from kdp.errors import bad_value
from kdp.io import atomic_path

RuleFunction = Callable[[ClaimsTables], Iterator[Item]]
ReviewFunction = Callable[[ClaimsTables, Sequence[Item]], Iterator[Item]]


@dataclass(frozen=True)
class Rule:
    name: str
    family: str
    generic: bool
    function: RuleFunction | ReviewFunction
    needs: tuple[str, ...] | None = None  # a review's inputs: these rules' items (None: every rule before it)

    @property
    def is_review(self) -> bool:
        return self.needs is not None


RULES: dict[str, Rule] = {}


def audit_rule(family: str, generic: bool = False) -> Callable[[RuleFunction], RuleFunction]:
    def register(function: RuleFunction) -> RuleFunction:
        RULES[function.__name__] = Rule(function.__name__, family, generic, function)
        return function

    return register


def audit_review(family: str, needs: Sequence[str] = (), generic: bool = False
                 ) -> Callable[[ReviewFunction], ReviewFunction]:
    """A review of the named rules' results (``needs=()``: of every rule registered before it)."""

    def register(function: ReviewFunction) -> ReviewFunction:
        RULES[function.__name__] = Rule(function.__name__, family, generic, function, tuple(needs))
        return function

    return register


def applicable(tables: ClaimsTables) -> list[str]:
    return [name for name, rule in RULES.items() if rule.generic or tables.paper.rules == "all"]


def run_rules(tables: ClaimsTables, rules: Iterable[str] | None = None) -> pd.DataFrame:
    """Run the named rules (every rule that applies to the folder's paper by default) on whatever tables are
    loaded; a rule skips absent tables. A review named alone still sees the results of the rules it reads."""
    names = list(rules) if rules is not None else applicable(tables)
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise bad_value("audit rule", unknown[0], sorted(RULES))
    results: dict[str, list[Item]] = {}
    for name in _with_inputs(names, applicable(tables)):
        rule = RULES[name]
        if rule.is_review:
            read = rule.needs or [n for n in results if n in names or rules is None]
            found = rule.function(tables, [item for n in read for item in results.get(n, [])])
        else:
            found = rule.function(tables)
        results[name] = [replace(item, rule=item.rule or name) for item in found]
    rows = [item_row(item) for name in names for item in results[name]]
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))


def _with_inputs(names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """``names`` plus the rules their reviews read that apply to the paper, in registry order (a review after
    what it reads)."""
    wanted = set(names)
    for name in names:
        wanted.update(need for need in RULES[name].needs or () if need in allowed)
    return [name for name in RULES if name in wanted]


def write_audit(audit: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        audit.to_csv(tmp, index=False)
