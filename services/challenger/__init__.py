"""The challenger: mines coding challenges from attackers' own chat-template prefixes."""

from services.challenger.service import SPEC

__all__ = ["SPEC"]
