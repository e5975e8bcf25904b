"""The responder: attacker and defender both answer a challenge."""

from warriorcoder.stages.responder.service import SPEC

__all__ = ["SPEC"]
