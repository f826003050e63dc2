"""Competing pruning methods, one registered `PruningMethod` per module.

Each is declared in `baselines.specs` and listed in `kdp.registry.BUILTIN_METHODS`; its module is imported only by
the jobs that run it.
"""
