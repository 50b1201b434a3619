"""The op categories binding sorts graph nodes into; rule sets map categories to rules.

:func:`relprop.rules.ops.categorize` decides a node's category from its op and which of
its inputs carry relevance; ``docs/semantics.md`` §Rule sets by category says what each rule set does per
category.  A :class:`Category` is a ``str`` (``Category.DENSE == "dense"``), so code that
compares categories with their names keeps working.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Category", "COMPUTING", "WEIGHTED_CATEGORIES", "SEPARABLE"]


class Category(str, Enum):
    """What an op does, as far as relevance is concerned."""

    #: data movement (views, copies, gathers, pads): relevance moves by the op's gradient
    MOVE = "move"
    #: a select/slice that is one of a set covering its input along one dimension, or a
    #: crop undoing a pad upstream: moves relevance
    SPLIT = "split"
    #: a select/slice that keeps a part and drops the rest: a pooling, it computes
    POOL_SELECT = "pool_select"
    #: a weighted layer (linear, matmul with a constant operand)
    DENSE = "dense"
    #: a convolution
    CONV = "conv"
    #: a product of two relevance-carrying tensors (attention scores)
    MATMUL = "matmul"
    #: a sum of tensors
    ADD = "add"
    #: multiplication or division by a constant tensor (a layer-scale weight)
    SCALE = "scale"
    #: multiplication or division by a plain number or a normalisation statistic
    #: (attention's q·scale, rotate_half's −1, RMSNorm written out): relevance passes
    RESCALE = "rescale"
    #: elementwise product of two relevance-carrying tensors (gates)
    MUL = "mul"
    #: division by a relevance-carrying tensor
    DIV = "div"
    #: elementwise nonlinearity of one input (ReLU, GELU, SiLU, tanh, ...)
    ACTIVATION = "activation"
    #: layer, group, batch and RMS normalisation
    NORM = "norm"
    SOFTMAX = "softmax"
    #: scaled dot-product attention as one op
    ATTENTION = "attention"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    #: an embedding lookup: a relevance source
    EMBEDDING = "embedding"
    #: masked_fill / where with a constant fill: moves relevance where kept
    MASK = "mask"
    #: one output of a multi-output op
    GETITEM = "getitem"
    #: linear in its relevant inputs jointly, not a weighted layer: cumsum, trace,
    #: scatter_add, linear/bilinear/bicubic interpolation, products with one relevant operand
    LINEAR = "linear"
    #: a pointwise function of several relevant inputs (maximum, where, clamp with tensor
    #: bounds, atan2, lerp, ...)
    POINTWISE = "pointwise"
    #: keeps some entries chosen by value and drops the rest (amin, median, kthvalue,
    #: topk, cummax, ...): relevance goes with the kept values
    SELECTION = "selection"
    #: log-sum-exp and its relatives (logsumexp, log_softmax, logcumsumexp)
    LOGSUMEXP = "logsumexp"
    #: any other differentiable op with a floating output (linear algebra, prod, norms, ...)
    GENERIC = "generic"

    def __str__(self) -> str:
        return self.value


#: categories whose ops compute (the ones module-name and module-class overrides replace)
COMPUTING = frozenset(
    {
        Category.POOL_SELECT,
        Category.DENSE,
        Category.CONV,
        Category.MATMUL,
        Category.ADD,
        Category.SCALE,
        Category.MUL,
        Category.DIV,
        Category.ACTIVATION,
        Category.NORM,
        Category.SOFTMAX,
        Category.ATTENTION,
        Category.MAXPOOL,
        Category.AVGPOOL,
        Category.LINEAR,
        Category.POINTWISE,
        Category.SELECTION,
        Category.LOGSUMEXP,
        Category.GENERIC,
    }
)
#: weighted layers (the first of them on a path gets a rule set's ``first`` rule)
WEIGHTED_CATEGORIES = frozenset({Category.DENSE, Category.CONV})
#: categories of ops that treat every index of dimension 0 separately when all their
#: tensors share it (a per-sample factor on the output's relevance reaches each input's
#: samples unchanged)
SEPARABLE = frozenset(
    {
        Category.DENSE,
        Category.CONV,
        Category.NORM,
        Category.ACTIVATION,
        Category.ADD,
        Category.MUL,
        Category.DIV,
        Category.SCALE,
        Category.RESCALE,
        Category.MATMUL,
        Category.MAXPOOL,
        Category.AVGPOOL,
        Category.ATTENTION,
    }
)
