"""Attention: the mask description (mask.py), the vanilla reference (vanilla.py), the blockwise kernel
(blockwise.py), ring attention with its zig-zag layout (ring.py), and `attend`, which dispatches among them."""

from models.attention import blockwise, ring
from models.attention.dispatch import PATHS, attend
from models.attention.mask import AttentionMask
from models.attention.vanilla import vanilla_attention

__all__ = ['PATHS', 'AttentionMask', 'attend', 'blockwise', 'ring', 'vanilla_attention']
