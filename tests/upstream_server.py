"""llama-cpp-python's own OpenAI-compatible server (``llama_cpp.server``), as the gateway tests' upstream.

Run as ``python tests/upstream_server.py --config_file CONFIG``. It is the real server, started with the two
things every model load in this project does: ``use_extra_bufts = False`` (on CPUs with AMX, ggml otherwise puts
Q4_1 weights in the AMX buffer and the first decode crashes; the server has no option for it), and the CPU
backend loaded from llama-cpp-python's lib folder (a portable build keeps it there, where ggml does not look).
"""

import runpy
import sys

import llama_cpp.llama_cpp as lib

from neeko_npc.engine.llamacpp import load_cpu_backend

_default_params = lib.llama_model_default_params


def _guarded_params():
    params = _default_params()
    params.use_extra_bufts = False
    return params


lib.llama_model_default_params = _guarded_params
load_cpu_backend()

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__")
