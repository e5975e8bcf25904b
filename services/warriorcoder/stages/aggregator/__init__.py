"""The aggregator: votes and Elo pick the winner; ratings and training samples are written."""

from warriorcoder.stages.aggregator.service import SPEC

__all__ = ["SPEC"]
