"""The aggregator: votes and Elo pick the winner; ratings and training samples are written."""
