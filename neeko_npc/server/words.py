"""The protocol's words (protocol.py) as the proto's enum values, each table written once: the service answers
with them, the CLI's client commands read them back."""

from __future__ import annotations

from ..protocol import Cache, Finish, Order
from ..v1 import dialogue_pb2 as pb

FINISH = {Finish.STOP: pb.FINISH_REASON_STOP, Finish.LENGTH: pb.FINISH_REASON_LENGTH,
          Finish.CANCELLED: pb.FINISH_REASON_CANCELLED}
ORDER = {Order.ROUND_ROBIN: pb.TURN_ORDER_ROUND_ROBIN, Order.NAMED_LAST: pb.TURN_ORDER_NAMED_LAST}
CACHE = {Cache.HOT: pb.PROMPT_CACHE_HOT, Cache.SNAPSHOT: pb.PROMPT_CACHE_SNAPSHOT, Cache.COLD: pb.PROMPT_CACHE_COLD}
ORDER_WORD = {v: k for k, v in ORDER.items()}
CACHE_WORD = {v: k for k, v in CACHE.items()}
