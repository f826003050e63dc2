"""A LaTeX-free check that a generated table compiles inside a minimal document with booktabs (and longtable):
environments nest and close, braces balance, special characters are escaped, and every row of a tabular has as
many cells as its column specification (rows with \\multicolumn are skipped)."""

import re

_ENVIRONMENT = re.compile(r"\\(begin|end)\{([a-z*]+)\}")
_UNESCAPED = re.compile(r"(?<!\\)[_#%&$^]")
_OPENING = re.compile(r"\\begin\{(?:tabular|longtable)\}(?:\[[^\]]*\])?\{")


def assert_compilable(tex: str) -> None:
    _assert_environments_nest(tex)
    assert _balanced_braces(tex), "unbalanced braces"
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule")), "booktabs rules missing"
    for body, columns in _tabulars(tex):
        for row in _rows(body):
            if r"\multicolumn" in row:
                continue
            text = re.sub(r"\$[^$]*\$", "", row).replace("&", "")  # math is allowed its own characters
            assert not _UNESCAPED.search(text), f"unescaped special character in row {row!r}"
            assert row.count("&") + 1 == columns, f"row has {row.count('&') + 1} cells, spec {columns}: {row!r}"


def _assert_environments_nest(tex: str) -> None:
    stack = []
    for kind, name in _ENVIRONMENT.findall(tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} closes nothing it opened"
    assert not stack, f"unclosed environments {stack}"


def _balanced_braces(tex: str) -> bool:
    depth = 0
    for match in re.finditer(r"(?<!\\)[{}]", tex):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def _tabulars(tex: str):
    for match in _OPENING.finditer(tex):
        spec, start = _group(tex, match.end())
        spec = re.sub(r"[pmb]\{[^{}]*(\{[^{}]*\}[^{}]*)*\}", "p", re.sub(r"@\{[^{}]*\}", "", spec))
        end = re.search(r"\\end\{(?:tabular|longtable)\}", tex[start:])
        yield tex[start: start + end.start()], len(re.findall(r"[lcrXp]", spec))


def _group(tex: str, start: int) -> tuple[str, int]:
    """The text of the brace group that opened just before ``start``, and the index after its closing brace."""
    depth = 1
    for index in range(start, len(tex)):
        depth += {"{": 1, "}": -1}.get(tex[index], 0)
        if depth == 0:
            return tex[start:index], index + 1
    raise AssertionError("unclosed column specification")


def _rows(body: str):
    for line in body.split("\\\\"):
        line = re.sub(r"\\(toprule|midrule|bottomrule|endhead|endfirsthead|endfoot|endlastfoot|hline)\b", "", line)
        line = re.sub(r"\\(cmidrule|caption|label)(\([^)]*\))?\{[^}]*\}", "", line).strip()
        if line and not line.startswith("%"):
            yield line
