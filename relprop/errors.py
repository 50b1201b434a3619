"""The exceptions relprop raises.

Every error a user can cause is one of these, with a message that says what was
wrong and what was expected.  Value problems also subclass :class:`ValueError`
so that generic ``except ValueError`` handlers keep working.
"""

from __future__ import annotations


class RelpropError(Exception):
    """Base class of every error raised by relprop."""


class TraceError(RelpropError):
    """The model could not be captured by ``torch.export``."""


class MissingRuleError(RelpropError):
    """A graph node on the relevance path has no rule bound to it (strict mode)."""


class RuleError(RelpropError, ValueError):
    """A rule was bound to an op it cannot handle, or was defined wrongly."""


class InputError(RelpropError, ValueError):
    """The input given to ``explain`` cannot be explained (shape, dtype, values)."""


class TargetError(RelpropError, ValueError):
    """The ``target`` given to ``explain`` does not fit the model's output."""


class NonFiniteRelevanceError(RelpropError, ArithmeticError):
    """Relevance became NaN or infinite at a node of the walk (the rule's arithmetic overflowed
    or divided by zero); the message names the node, its module and its rule."""
