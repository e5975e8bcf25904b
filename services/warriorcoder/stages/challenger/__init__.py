"""The challenger: mines coding challenges from attackers' own chat-template prefixes."""

from warriorcoder.stages.challenger.service import SPEC

__all__ = ["SPEC"]
