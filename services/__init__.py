"""WarriorCoder Arena services: challenger, responder, judge and aggregator, and their runtime."""

__version__ = "0.1.0"
