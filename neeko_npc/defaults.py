"""Every default and limit, once. The dataclasses (EngineConfig, Limits, GateSettings, TrainConfig, LoraConfig,
ServerConfig, ...) take their field defaults from here, and the CLI's option defaults come from the same names,
so a value changed here changes everywhere. Standard library only: the CLI imports it at start-up."""

import os
from pathlib import Path

# -- files ------------------------------------------------------------------------------------------------
CACHE_DIR = "~/.cache/neeko-npc"  # base-model fingerprints, exported adapters, float copies of GGUF bases
CACHE_ENV = "NEEKO_NPC_CACHE"  # moves it


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or os.path.expanduser(CACHE_DIR))


def warm_dir() -> Path:
    """Roles' warm prefixes (KV states) saved by the llama.cpp engine, restored at its next start."""
    return cache_root() / "warm"


def cores() -> int:
    """The CPU cores this process may run on (its affinity, so a container's limit counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """--threads when none is given: half the cores, at least one, leaving the rest to the game beside it. ggml's
    threads spin while they wait for each other, so a server that asks for every core collapses when the game
    holds one: `neeko-npc bench` (its section "Beside a game") measured it, docs/results.md "Beside a game"."""
    return max(1, cores() // 2)


# -- the daemon -------------------------------------------------------------------------------------------
HOST = "127.0.0.1"  # loopback only unless told otherwise
PORT = 50051
ADDRESS = f"{HOST}:{PORT}"  # where the client commands look for a daemon
WORKERS = 16  # gRPC worker threads
LLAMA_LOG_ENV = "NEEKO_NPC_LLAMA_LOG"  # 1: let llama.cpp print its own log (silenced otherwise)
TOKEN_ENV = "NEEKO_NPC_TOKEN"  # the bearer token, for serve and the client commands (never on a command line)
WATCH_INTERVAL = 1.0  # seconds between scans of the roles folder; 0 turns watching off
ROLES_DIR = "assets/roles"
EXPORT_FORMATS = ("peft", "vllm", "gguf-lora", "merged-gguf")  # neeko-npc export --format
SERVED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # export --format vllm: the name vLLM serves the base under
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM (0.6 and later) accepts as --max-lora-rank

POOL_SIZE = 4  # llama.cpp contexts: NPC lines generated at once
N_CTX = 2048  # tokens per context
MAX_QUEUE = 16  # requests that may wait for a context
QUEUE_TIMEOUT = 30.0  # seconds a request waits for one
HISTORY_TOKENS = 768  # conversation memory kept in the prompt per (session, NPC)
MAX_TURNS = 32  # exchanges remembered per (session, NPC)
MAX_SCENE_TURNS = 64  # turns one scene of a role's training dialogue may hold
MAX_CONVERSATIONS = 10000  # (session, NPC) pairs remembered, least recently used dropped
MAX_MEMORY_CHARS = 16_000_000  # characters of remembered text, all sessions together; least recently used dropped
MAX_BATCH = 8  # torch engine: NPC lines decoded together
SNAPSHOT_MIB = 512  # host memory for kept conversation states (KV snapshots); 22.5 KiB a token on SmolLM2-135M
ENGINES = ("llama.cpp", "torch", "openai")  # serve --engine; the first is the default

# -- the gateway (serve --engine openai) -----------------------------------------------------------------
UPSTREAM_ANY = "any"  # --upstream-models any: send every hosted NPC; the upstream answers 404 for one it lacks (vLLM)
UPSTREAM_LISTED = "listed"  # --upstream-models listed: only NPCs the upstream's /v1/models lists
UPSTREAM_MODELS = (UPSTREAM_ANY, UPSTREAM_LISTED)  # the first is the default
UPSTREAM_CONNECT_TIMEOUT = 5.0  # seconds to reach the upstream and get its answer's headers
UPSTREAM_READ_TIMEOUT = 60.0  # seconds the upstream may go quiet in the middle of a line
UPSTREAM_LIST_TTL = 10.0  # seconds the upstream's model list is trusted (--upstream-models listed)
UPSTREAM_KEY_ENV = "NEEKO_NPC_UPSTREAM_KEY"

# -- sampling -----------------------------------------------------------------------------------------------
MAX_TOKENS = 96  # a line's length when the request leaves it at 0
TEMPERATURE = 0.7
TOP_P = 0.95
# serve --contrast: an NPC's block pushed away from the base model's logits by this much (0: off), where neither the
# request nor the NPC's file sets one. Off: blocks on all four attention projections carry the voice without it, and
# contrast makes lines less expected at half the decode rate (two forwards a token); it stays the dial for a louder
# voice (docs/corpora.md, "Contrast, served" and "Four projections, no contrast").
CONTRAST = 0.0
MAX_CONTRAST = 4.0  # the largest contrast a request or serve may ask for
# The voice check of a bake (neeko/voice_check.py): each trained role's own contrast, stored in its .nrole and served
# when neither the request nor serve --contrast sets one, is the lowest of these whose replies to the set's training
# prompts the judge gives to the role within noise as often as at the best one: contrast buys a louder voice with less
# expected replies (docs/corpora.md, "The dial"), so it is spent only where the check hears what it buys. Choosing the
# best alone lifted the Office's attribution from 39% to 55% (docs/corpora.md, "A contrast per NPC").
# Off by default since the blocks moved to all four attention projections: without contrast they met every voice and
# coherence target on both outside corpora, and the check costs minutes a bake (docs/corpora.md, "Four projections").
VOICE_CHECK = False  # bake --voice-check / --no-voice-check
VOICE_CHECK_CONTRASTS = (0.0, 0.5, 1.0)
VOICE_CHECK_PROMPTS = 12  # training prompts taken from each role of the set; every checked role answers all of them
VOICE_CHECK_MAX_PROMPTS = 60  # ... but fewer a role in a larger cast, so a checked role answers at most this many
VOICE_CHECK_TOKENS = 40  # the length of each reply the judge reads

# -- request limits ---------------------------------------------------------------------------------------
MAX_TOKENS_LIMIT = 512  # the largest max_tokens a request may ask for
MAX_PLAYER_LINE_CHARS = 2000
MAX_SCENE_CHARS = 8000
MAX_PROFILE_CHARS = 8000  # a procedural NPC's profile, all fields together
MAX_ID_CHARS = 128  # npc_id and session_id
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_SESSION_NPCS = 256  # NPCs in one restored session
MAX_NPC_LINE_CHARS = 8000  # one remembered NPC line in a restored session
MAX_ACTIONS = 16  # actions one request may declare for its beat
CONVERSE_TURNS = 6  # turns of a Converse that leaves it at 0
MAX_CONVERSE_TURNS = 32  # the most turns a Converse may ask for
MAX_CONVERSE_NPCS = 4
MAX_INTERJECTIONS = 4  # player lines a Converse call may send before one turn
MAX_CONVERSE = 4  # Converse calls streaming at once; each holds one of the WORKERS threads, the rest stay free
CONVERSE_START_S = 5.0  # seconds a Converse call may take to send its start message before it is closed
MAX_ACTION_CHARS = 120  # an action's description

# -- the gate ----------------------------------------------------------------------------------------------
GATE_TAU = 0.05  # stored in each role baked by `bake`
TOP_K = 3  # blocks a fused role or a procedural NPC's blend may mix (--max-blend)
MIN_WEIGHT = 0.02  # gate weights below this are dropped
FUSE_TAU = 0.1  # bake-role --fuse: softer than the gate's, so close roles mix

# -- baking -----------------------------------------------------------------------------------------------
RANK = 8
ALPHA = 16.0
# All four attention projections: without any contrast their blocks' lines were recognised 19 points above
# prompting on both outside corpora, level with the real lines, and as expected as prompting's to a second language
# model; q and v alone needed contrast for that voice, and lost the expectedness with it (docs/corpora.md, "Four
# projections, no contrast"). Twice the file of q+v.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
EPOCHS = 2  # 4 overfit the outside corpus; 2 gave lower held-out loss on both corpora in half the time (docs/corpora.md)
LR = 2e-3
BATCH_SIZE = 4
MAX_LEN = 320  # tokens per training example
SEED = 0
DISTINCT = 0.0  # bake --distinct: weight of the term that keeps a block from lowering other roles' loss (neeko/train.py)
PRECISION = "auto"  # base weights while training (bf16 where the hardware has it, else fp32); blocks are float32
PRECISIONS = ("auto", "fp32", "bf16")  # --precision of bake, bake-role and eval
HOLDOUT = 0.2  # share of scenes held out to measure a block
BEAT_QUESTION = False  # True: also train each annotated line's beat question where the role's head answers its
#                        beats: three times the training of a village role (docs/making-roles.md)
