"""The arena's invariants on the messages a stage consumes: a violation is poison, with a reason.

Usage::

    check_challenge(challenge, settings)     # the responder, before any model is asked
    check_battle(battle, settings)           # the judge
    check_judgement(judgement, settings)     # the aggregator, before the ratings change
    orders = orders_for("alternate", battle.id)   # whose answer a judge sees first, per verdict

Each check raises ``PoisonError(reason, detail)`` on the first broken invariant, so the bus
dead-letters the message at once with ``reason`` (one of ``REASONS``, short and stable: metric and
dead-letter labels) and nothing downstream ever sees it. A message is checked against this arena's
configuration, not against itself: the fighters are two different competitors; the language is
one of the arena's languages; the id is the one the challenge's content hashes to
(``battle_id(attacker, defender, normalise(instruction))``), and a battle and its judgement reuse
it; each answer comes from the fighter of its role; the votes are exactly the judges this arena
gives the battle (``settings.judges_for``: in the pool, uninvolved, each once, none of a
fighter's family under ``judge.family_policy: exclude``), each with the orders of the
judgement's position mode, the winner its verdicts combine to (``arena.verdicts.combine``) and
the weight the arena gives its judge (``settings.vote_weight``: below 1 only for a judge of a
fighter's family under ``family_policy: weight``). Checking a battle checks its challenge, and a
judgement its battle: forged content cannot ride inside a well-formed envelope.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from warriorcoder.arena.instructions import normalise
from warriorcoder.arena.verdicts import Label, Role, combine
from warriorcoder.errors import PoisonError
from warriorcoder.proto.messages import Battle, Challenge, Judgement, Verdict, Vote, battle_id
from warriorcoder.runtime.settings import ArenaSettings

__all__ = ["REASONS", "check_battle", "check_challenge", "check_judgement", "orders_for"]

# Every reason a check gives (the dead letter's ``reason``).
REASONS: Final = frozenset(
    {
        "unknown_model",  # a fighter that is not a competitor of this arena
        "same_fighter",  # a model fighting itself
        "unknown_language",  # a language this arena does not mine
        "id_mismatch",  # an id that is not the one the challenge's content hashes to
        "answer_mismatch",  # an answer not from the fighter of its role
        "tests_by_fighter",  # the battle's tests written by one of its own fighters
        "judge_not_in_pool",  # a vote by a model outside the judge pool
        "judge_is_fighter",  # a vote by one of the battle's own fighters
        "duplicate_judge",  # two votes by one judge
        "votes_mismatch",  # the voters are not exactly the judges this arena gives the battle
        "orders_mismatch",  # a vote's orders or verdicts do not fit the position mode
        "winner_mismatch",  # a vote's winner is not what its verdicts combine to
        "weight_mismatch",  # a vote's weight is not the one the arena gives its judge
    }
)


def orders_for(mode: str, battle_id: str) -> list[Role]:
    """Whose answer is shown as Assistant A, per verdict of one judge: both orders in ``both``
    mode, in ``alternate`` mode the one the battle id's parity picks."""
    if mode == "both":
        return ["attacker", "defender"]
    return ["attacker" if int(battle_id, 16) % 2 == 0 else "defender"]


def check_challenge(ch: Challenge, settings: ArenaSettings) -> None:
    """Two different competitors, one of the arena's languages, the id its content hashes to."""
    for model in (ch.attacker, ch.defender):
        if model not in settings.competitors:
            raise PoisonError("unknown_model", f"{model!r} is not a competitor of this arena")
    if ch.attacker == ch.defender:
        raise PoisonError("same_fighter", f"{ch.attacker!r} cannot fight itself")
    if ch.language not in settings.languages:
        raise PoisonError("unknown_language", f"{ch.language!r} is not a language of this arena")
    expected = battle_id(ch.attacker, ch.defender, normalise(ch.instruction))
    if ch.id != expected:
        raise PoisonError("id_mismatch", f"challenge id {ch.id} != {expected} (its content)")


def check_battle(b: Battle, settings: ArenaSettings) -> None:
    """A valid challenge, its id, each answer from the fighter of its role, and tests (when
    present) written by a model that fights in neither corner."""
    check_challenge(b.challenge, settings)
    if b.id != b.challenge.id:
        raise PoisonError("id_mismatch", f"battle id {b.id} != challenge id {b.challenge.id}")
    ch = b.challenge
    for answer, model, role in (
        (b.attacker_answer, ch.attacker, "attacker"),
        (b.defender_answer, ch.defender, "defender"),
    ):
        if (answer.model, answer.role) != (model, role):
            raise PoisonError(
                "answer_mismatch",
                f"the {role}'s answer is by {answer.model!r} as {answer.role}, not by {model!r}",
            )
    if b.tests is not None and b.tests.writer in (ch.attacker, ch.defender):
        raise PoisonError(
            "tests_by_fighter", f"the tests are written by {b.tests.writer!r}, a fighter"
        )


def check_judgement(j: Judgement, settings: ArenaSettings) -> None:
    """A valid battle, its id, and exactly this arena's judges of it, each vote consistent."""
    check_battle(j.battle, settings)
    if j.id != j.battle.id:
        raise PoisonError("id_mismatch", f"judgement id {j.id} != battle id {j.battle.id}")
    ch = j.battle.challenge
    judges = [v.judge for v in j.votes]
    pool = settings.judge_pool
    for judge in judges:
        if judge not in pool:
            raise PoisonError("judge_not_in_pool", f"{judge!r} is not in the judge pool")
        if judge in (ch.attacker, ch.defender):
            raise PoisonError("judge_is_fighter", f"{judge!r} judges its own battle")
    repeated = sorted(judge for judge, n in Counter(judges).items() if n > 1)
    if repeated:
        raise PoisonError("duplicate_judge", f"{repeated} voted more than once")
    expected = settings.judges_for(ch.attacker, ch.defender)
    if set(judges) != set(expected):
        raise PoisonError("votes_mismatch", f"votes by {sorted(judges)}, judges {sorted(expected)}")
    orders = orders_for(j.position_mode, j.id)
    for vote in j.votes:
        _check_vote(vote, orders, j.position_mode)
        weight = settings.vote_weight(vote.judge, ch.attacker, ch.defender)
        if vote.weight != weight:
            raise PoisonError(
                "weight_mismatch", f"{vote.judge!r}: weight {vote.weight}, the arena gives {weight}"
            )


def _check_vote(vote: Vote, orders: list[Role], mode: str) -> None:
    if vote.orders != orders or len(vote.verdicts) != len(orders):
        raise PoisonError(
            "orders_mismatch",
            f"{vote.judge!r}: orders {vote.orders} with {len(vote.verdicts)} verdicts, "
            f"{mode!r} mode gives {orders}",
        )
    if vote.asked < len(orders):
        raise PoisonError("orders_mismatch", f"{vote.judge!r}: {vote.asked} calls for {orders}")
    combined = combine(vote.orders, [_label(v) for v in vote.verdicts])
    if vote.winner != combined:
        raise PoisonError(
            "winner_mismatch",
            f"{vote.judge!r}: winner {vote.winner!r}, verdicts {vote.verdicts} give {combined!r}",
        )


def _label(verdict: Verdict) -> Label | None:
    return None if verdict == "invalid" else verdict
