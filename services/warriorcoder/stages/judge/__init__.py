"""The judge: every uninvolved judge compares the two answers."""

from warriorcoder.stages.judge.service import SPEC

__all__ = ["SPEC"]
