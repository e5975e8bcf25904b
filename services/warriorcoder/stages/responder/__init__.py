"""The responder: attacker and defender both answer a challenge."""
