"""The base of every error this package raises on purpose: :class:`ConceptAttentionError`.

Each error class of the package subclasses :class:`ConceptAttentionError` *and* the built-in it used to be (most are
``ValueError``), so ``except ValueError`` keeps working while ``except ConceptAttentionError`` catches exactly the
errors about the caller's input or setup — not a ``ValueError`` raised by a bug inside torch or diffusers. The command
line reports a ``ConceptAttentionError`` as one error line (exit status 2) and the app shows its message; any other
exception is a bug and keeps its traceback.

Example:
    >>> from conceptattention import ConceptAttentionError, ConceptError
    >>> issubclass(ConceptError, ConceptAttentionError), issubclass(ConceptError, ValueError)
    (True, True)
"""

from __future__ import annotations


__all__ = ["ConceptAttentionError"]


class ConceptAttentionError(Exception):
    """Base of the errors this package raises about the caller's input, files or setup (never a bug's)."""
