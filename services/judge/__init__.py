"""The judge: every uninvolved judge compares the two answers."""

from services.judge.service import SPEC

__all__ = ["SPEC"]
