"""w/o Kernel (paper Table 1): remove the CKA-selected blocks that KDP would fold, with no replacement."""

from __future__ import annotations

from kdp.registry import PruneContext, PruneRecord, PruningMethod, register_method


@register_method("drop_blocks")
class DropBlocks(PruningMethod):
    """Inputs and hyperparameters: `kdp.methods.specs.DROP_BLOCKS`."""

    def prune(self, ctx: PruneContext) -> PruneRecord:
        layers = sorted(i for block in ctx.blocks for i in block.layers)
        ctx.adapter.remove_layers(layers)
        return PruneRecord(layers_removed=layers, blocks=[[b.first, b.last] for b in ctx.blocks])
