"""The responder: attacker and defender both answer a challenge."""

from services.responder.service import SPEC

__all__ = ["SPEC"]
