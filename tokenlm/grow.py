"""Deeper token LMs from trained ones (``tokenwave train-lm --init LM --grow-layers N``).

The grown model keeps every weight of the ``--init`` LM, its blocks as the first layers, and
appends ``N - n_layers`` new blocks (fresh weights) whose residual branches end in a zero matrix
(the attention's output projection and the MLP's second layer). A block adds its branches to
the residual stream, so at step 0 each new block passes its input through unchanged and the
grown LM computes exactly what the ``--init`` LM did; training then puts the extra depth to use.
(Zero-initialised residual branches as in Fixup and ReZero; the same idea grows the codec's
decoder, ``train-codec --grow-decoder``.)

Works for both stages (:class:`tokenlm.ar.ARModel`, :class:`tokenlm.nar.NARModel`, whose AdaLN
gates multiply a zero branch and so keep it zero).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from tokenlm.errors import LMError


def grow_layers(model: nn.Module, n_layers: int) -> nn.Module:
    """A copy of ``model`` (an AR or NAR) with ``n_layers`` transformer blocks that computes the
    same function; raises :class:`LMError` unless ``n_layers`` is more than the model has."""
    old = model.config.n_layers
    if not isinstance(n_layers, int) or n_layers <= old:
        raise LMError(f"--grow-layers must be more than the --init LM's {old} layers, got {n_layers}")
    grown = type(model)(dataclasses.replace(model.config, n_layers=n_layers))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new_prefixes = tuple(f"transformer.blocks.{i}." for i in range(old, n_layers))
    if unexpected or not all(key.startswith(new_prefixes) for key in missing):
        raise LMError("cannot grow this model: its weights do not match a deeper model of the same kind")
    for block in grown.transformer.blocks[old:]:
        nn.init.zeros_(block.attn.proj.weight)
        nn.init.zeros_(block.mlp[2].weight)
    return grown.to(next(model.parameters()).dtype).train(model.training)
