"""Where models come from: a model entry's ``source``, checked when the config is read (no torch needed).

A ``source`` is one of:
  ``embedded:<name>``  a model the project builds offline (``smollm2-135m``, ``opt-kjv``),
  ``hub:<org/name>``   a Hugging Face hub id (needs the hub or a warm local cache),
  ``path:<dir>``       a local ``save_pretrained`` directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdp.errors import UserError

SOURCE_KINDS = ("embedded", "hub", "path")
EMBEDDED_MODELS = ("smollm2-135m", "opt-kjv", "micro-llama", "micro-opt")


@dataclass(frozen=True)
class ModelSource:
    kind: str
    ref: str

    @classmethod
    def parse(cls, text: str, where: str) -> "ModelSource":
        kind, sep, ref = text.partition(":")
        if not sep or kind not in SOURCE_KINDS or not ref:
            raise UserError(
                f"{where}: source {text!r} is not allowed; allowed: "
                "'embedded:<name>' (" + ", ".join(EMBEDDED_MODELS) + "), 'hub:<org/name>', 'path:<directory>'"
            )
        if kind == "embedded" and ref not in EMBEDDED_MODELS:
            raise UserError(f"{where}: embedded model {ref!r} is unknown; allowed: {', '.join(EMBEDDED_MODELS)}")
        return cls(kind, ref)

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"
