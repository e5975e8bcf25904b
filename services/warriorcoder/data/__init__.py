"""Data products of the arena: Chatbot Arena votes, Bradley–Terry ratings, exports, dataset cards.

Usage::

    from warriorcoder.data.bradley_terry import leaderboard, format_table
    from warriorcoder.data.votes import read_votes
    print(format_table(leaderboard(read_votes("battles.jsonl"), bootstrap_n=1000, seed=0)))
"""
