"""``warriorcoder up``: an arena on one machine, supervised, with a live leaderboard."""
