from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]

class PromptCache(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_CACHE_UNSPECIFIED: _ClassVar[PromptCache]
    PROMPT_CACHE_HOT: _ClassVar[PromptCache]
    PROMPT_CACHE_SNAPSHOT: _ClassVar[PromptCache]
    PROMPT_CACHE_COLD: _ClassVar[PromptCache]

class TurnOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TURN_ORDER_ROUND_ROBIN: _ClassVar[TurnOrder]
    TURN_ORDER_NAMED_LAST: _ClassVar[TurnOrder]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason
PROMPT_CACHE_UNSPECIFIED: PromptCache
PROMPT_CACHE_HOT: PromptCache
PROMPT_CACHE_SNAPSHOT: PromptCache
PROMPT_CACHE_COLD: PromptCache
TURN_ORDER_ROUND_ROBIN: TurnOrder
TURN_ORDER_NAMED_LAST: TurnOrder

class SceneContext(_message.Message):
    __slots__ = ("location", "time_of_day", "weather", "npc_mood", "npc_activity", "player_name", "player_standing", "recent_events", "nearby_characters", "facts")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    TIME_OF_DAY_FIELD_NUMBER: _ClassVar[int]
    WEATHER_FIELD_NUMBER: _ClassVar[int]
    NPC_MOOD_FIELD_NUMBER: _ClassVar[int]
    NPC_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    PLAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    PLAYER_STANDING_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEARBY_CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    location: str
    time_of_day: str
    weather: str
    npc_mood: str
    npc_activity: str
    player_name: str
    player_standing: str
    recent_events: _containers.RepeatedScalarFieldContainer[str]
    nearby_characters: _containers.RepeatedScalarFieldContainer[str]
    facts: _containers.ScalarMap[str, str]
    def __init__(self, location: _Optional[str] = ..., time_of_day: _Optional[str] = ..., weather: _Optional[str] = ..., npc_mood: _Optional[str] = ..., npc_activity: _Optional[str] = ..., player_name: _Optional[str] = ..., player_standing: _Optional[str] = ..., recent_events: _Optional[_Iterable[str]] = ..., nearby_characters: _Optional[_Iterable[str]] = ..., facts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GenerationOptions(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop", "contrast")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    contrast: float
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., contrast: _Optional[float] = ...) -> None: ...

class NpcProfile(_message.Message):
    __slots__ = ("name", "persona", "style", "knowledge", "example_lines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_LINES_FIELD_NUMBER: _ClassVar[int]
    name: str
    persona: str
    style: str
    knowledge: str
    example_lines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., persona: _Optional[str] = ..., style: _Optional[str] = ..., knowledge: _Optional[str] = ..., example_lines: _Optional[_Iterable[str]] = ...) -> None: ...

class SayRequest(_message.Message):
    __slots__ = ("npc_id", "session_id", "player_line", "scene", "options", "profile", "blend", "beats")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYER_LINE_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    BEATS_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    session_id: str
    player_line: str
    scene: SceneContext
    options: GenerationOptions
    profile: NpcProfile
    blend: _containers.RepeatedCompositeFieldContainer[RoleWeight]
    beats: BeatRequest
    def __init__(self, npc_id: _Optional[str] = ..., session_id: _Optional[str] = ..., player_line: _Optional[str] = ..., scene: _Optional[_Union[SceneContext, _Mapping]] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ..., profile: _Optional[_Union[NpcProfile, _Mapping]] = ..., blend: _Optional[_Iterable[_Union[RoleWeight, _Mapping]]] = ..., beats: _Optional[_Union[BeatRequest, _Mapping]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("id", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class BeatRequest(_message.Message):
    __slots__ = ("emotion", "emotions", "actions")
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    EMOTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    emotion: bool
    emotions: _containers.RepeatedScalarFieldContainer[str]
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    def __init__(self, emotion: _Optional[bool] = ..., emotions: _Optional[_Iterable[str]] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ...) -> None: ...

class Beat(_message.Message):
    __slots__ = ("id", "probability", "probabilities")
    class ProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    probability: float
    probabilities: _containers.ScalarMap[str, float]
    def __init__(self, id: _Optional[str] = ..., probability: _Optional[float] = ..., probabilities: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RoleWeight(_message.Message):
    __slots__ = ("role_id", "weight")
    ROLE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    role_id: str
    weight: float
    def __init__(self, role_id: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SayChunk(_message.Message):
    __slots__ = ("text", "finish_reason", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "time_to_first_token_ms", "role_weights", "done", "prompt_cache", "emotion", "action")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    ROLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    time_to_first_token_ms: float
    role_weights: _containers.RepeatedCompositeFieldContainer[RoleWeight]
    done: bool
    prompt_cache: PromptCache
    emotion: Beat
    action: Beat
    def __init__(self, text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., time_to_first_token_ms: _Optional[float] = ..., role_weights: _Optional[_Iterable[_Union[RoleWeight, _Mapping]]] = ..., done: _Optional[bool] = ..., prompt_cache: _Optional[_Union[PromptCache, str]] = ..., emotion: _Optional[_Union[Beat, _Mapping]] = ..., action: _Optional[_Union[Beat, _Mapping]] = ...) -> None: ...

class PrepareResponse(_message.Message):
    __slots__ = ("prompt_tokens", "read_tokens", "prompt_cache", "skipped", "elapsed_ms")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READ_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    read_tokens: int
    prompt_cache: PromptCache
    skipped: str
    elapsed_ms: float
    def __init__(self, prompt_tokens: _Optional[int] = ..., read_tokens: _Optional[int] = ..., prompt_cache: _Optional[_Union[PromptCache, str]] = ..., skipped: _Optional[str] = ..., elapsed_ms: _Optional[float] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("id", "name", "kind", "persona", "style", "weights", "sha256", "file")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    kind: str
    persona: str
    style: str
    weights: _containers.RepeatedCompositeFieldContainer[RoleWeight]
    sha256: str
    file: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[str] = ..., persona: _Optional[str] = ..., style: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[RoleWeight, _Mapping]]] = ..., sha256: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...

class RoleProblem(_message.Message):
    __slots__ = ("file", "error")
    FILE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    file: str
    error: str
    def __init__(self, file: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles", "problems")
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    problems: _containers.RepeatedCompositeFieldContainer[RoleProblem]
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ..., problems: _Optional[_Iterable[_Union[RoleProblem, _Mapping]]] = ...) -> None: ...

class GetRoleRequest(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class ReloadRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadRolesResponse(_message.Message):
    __slots__ = ("added", "changed", "removed", "problems")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    problems: _containers.RepeatedCompositeFieldContainer[RoleProblem]
    def __init__(self, added: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., problems: _Optional[_Iterable[_Union[RoleProblem, _Mapping]]] = ...) -> None: ...

class ForgetSessionRequest(_message.Message):
    __slots__ = ("session_id", "npc_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npc_id: str
    def __init__(self, session_id: _Optional[str] = ..., npc_id: _Optional[str] = ...) -> None: ...

class ForgetSessionResponse(_message.Message):
    __slots__ = ("forgotten",)
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    forgotten: int
    def __init__(self, forgotten: _Optional[int] = ...) -> None: ...

class Exchange(_message.Message):
    __slots__ = ("player_line", "npc_line")
    PLAYER_LINE_FIELD_NUMBER: _ClassVar[int]
    NPC_LINE_FIELD_NUMBER: _ClassVar[int]
    player_line: str
    npc_line: str
    def __init__(self, player_line: _Optional[str] = ..., npc_line: _Optional[str] = ...) -> None: ...

class NpcMemory(_message.Message):
    __slots__ = ("npc_id", "exchanges")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    exchanges: _containers.RepeatedCompositeFieldContainer[Exchange]
    def __init__(self, npc_id: _Optional[str] = ..., exchanges: _Optional[_Iterable[_Union[Exchange, _Mapping]]] = ...) -> None: ...

class SessionMemory(_message.Message):
    __slots__ = ("session_id", "npcs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPCS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npcs: _containers.RepeatedCompositeFieldContainer[NpcMemory]
    def __init__(self, session_id: _Optional[str] = ..., npcs: _Optional[_Iterable[_Union[NpcMemory, _Mapping]]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class RestoreSessionResponse(_message.Message):
    __slots__ = ("npcs", "exchanges")
    NPCS_FIELD_NUMBER: _ClassVar[int]
    EXCHANGES_FIELD_NUMBER: _ClassVar[int]
    npcs: int
    exchanges: int
    def __init__(self, npcs: _Optional[int] = ..., exchanges: _Optional[int] = ...) -> None: ...

class ConverseStart(_message.Message):
    __slots__ = ("npc_ids", "scene", "topic", "opening_line", "turns", "order", "options")
    NPC_IDS_FIELD_NUMBER: _ClassVar[int]
    SCENE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    OPENING_LINE_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    npc_ids: _containers.RepeatedScalarFieldContainer[str]
    scene: SceneContext
    topic: str
    opening_line: str
    turns: int
    order: TurnOrder
    options: GenerationOptions
    def __init__(self, npc_ids: _Optional[_Iterable[str]] = ..., scene: _Optional[_Union[SceneContext, _Mapping]] = ..., topic: _Optional[str] = ..., opening_line: _Optional[str] = ..., turns: _Optional[int] = ..., order: _Optional[_Union[TurnOrder, str]] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ...) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("start", "player_line")
    START_FIELD_NUMBER: _ClassVar[int]
    PLAYER_LINE_FIELD_NUMBER: _ClassVar[int]
    start: ConverseStart
    player_line: str
    def __init__(self, start: _Optional[_Union[ConverseStart, _Mapping]] = ..., player_line: _Optional[str] = ...) -> None: ...

class ConverseChunk(_message.Message):
    __slots__ = ("npc_id", "turn", "text", "turn_done", "finish_reason", "prompt_tokens", "completion_tokens", "role_weights", "player_line", "done")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_DONE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PLAYER_LINE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    turn: int
    text: str
    turn_done: bool
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    role_weights: _containers.RepeatedCompositeFieldContainer[RoleWeight]
    player_line: str
    done: bool
    def __init__(self, npc_id: _Optional[str] = ..., turn: _Optional[int] = ..., text: _Optional[str] = ..., turn_done: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., role_weights: _Optional[_Iterable[_Union[RoleWeight, _Mapping]]] = ..., player_line: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...
