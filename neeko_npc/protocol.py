"""The words of the dialogue protocol that Python code passes around, each spelled once. The service maps them to
the proto's enums (server/service.py), the CLI offers them as choices, the backends and the bench use them.
Standard library only: every layer may import it, and the CLI does at start-up."""


class Finish:
    """Why a line ended: the words every backend, the service's FinishReason table and the memory use, once."""

    STOP = "stop"  # an end of turn or a stop string
    LENGTH = "length"  # max_tokens, or the context is full
    CANCELLED = "cancelled"  # the client went away, its deadline passed, or the daemon is stopping
    ENDED = (STOP, LENGTH)  # a line said to its end: remembered, and given its beat


class Cache:
    """How a line's prompt was served (the service's PromptCache table): the context held a prefix, a kept state
    was restored, or it was read from the start."""

    HOT = "hot"
    SNAPSHOT = "snapshot"
    COLD = "cold"
    ALL = (HOT, SNAPSHOT, COLD)


class Order:
    """Who speaks next in a Converse (the proto's TurnOrder)."""

    ROUND_ROBIN = "round_robin"  # as named, in turn
    NAMED_LAST = "named_last"  # the NPC the last line named
    ALL = (ROUND_ROBIN, NAMED_LAST)
