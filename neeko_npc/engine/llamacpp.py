"""llama.cpp through llama-cpp-python's low-level API: one model, many contexts, LoRA adapters.

The model is always loaded with ``use_extra_bufts = False``: on CPUs with AMX,
ggml otherwise places Q4_1 weights in the AMX buffer and the first decode
segfaults, which would take the whole daemon down.

llama.cpp built with OpenMP (pip's default where libgomp exists) keeps a thread
team per decoding thread; while one thread that had decoded stayed alive, decodes
on any other thread ran 3 to 4 times slower on a 2-core machine (7 ms a token
became 25 ms). The daemon decodes on gRPC's worker threads, so setup.sh builds
with GGML_OPENMP=OFF and ``openmp_build()`` lets the engine warn about it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from .. import defaults
from ..errors import BaseModelError, LlamaError
from ..roles.base_model import base_info, resolve_base_model
from ..roles.prompt import ChatTemplate

_init_lock = threading.Lock()
_initialised = False


def _lib():
    global _initialised
    import llama_cpp

    with _init_lock:
        if not _initialised:
            llama_cpp.llama_log_set(_SILENT, ctypes.c_void_p(0)) if os.environ.get(defaults.LLAMA_LOG_ENV) != "1" else None
            load_cpu_backend()
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


def load_cpu_backend(folder: Path | None = None) -> None:
    """A portable llama.cpp (GGML_BACKEND_DL, as scripts/setup.sh and every bundle have it) keeps its CPU backend
    (with GGML_CPU_ALL_VARIANTS, one per instruction set: haswell, skylakex, zen4, ...) in libraries beside
    libggml, and ggml loads the best one this CPU runs. ggml looks beside the executable and in the working
    directory, which are python's and the caller's, so point it at llama-cpp-python's own lib folder (or
    ``folder``: the bundle builder asks which of a bundle's variants this CPU gets).

    The call goes through libllama's handle, which resolves to the libggml that libllama itself uses: a wheel
    holds libggml.so and libggml.so.0 as two files, and registering the backend in the other copy (the one
    llama_cpp._ggml opens) leaves libllama with none. A build with the CPU backend linked in has it registered
    already, and nothing is loaded."""
    import llama_cpp
    import llama_cpp.llama_cpp as bound

    lib = bound._lib
    try:
        count, load = lib.ggml_backend_reg_count, lib.ggml_backend_load_all_from_path
    except AttributeError:  # Windows: symbols are looked up in the library itself; there is one ggml.dll
        from llama_cpp import _ggml

        count, load = _ggml.libggml.ggml_backend_reg_count, _ggml.libggml.ggml_backend_load_all_from_path
    count.restype = ctypes.c_size_t
    load.argtypes = [ctypes.c_char_p]
    if count() == 0:
        folder = folder or Path(llama_cpp.__file__).resolve().parent / "lib"
        load(os.fsencode(folder))
        if count() == 0:
            raise LlamaError(f"llama.cpp found no CPU backend in {folder} that this CPU can run")


def _silent(level, text, user_data):  # pragma: no cover - called from C
    return None


try:
    import llama_cpp as _lc

    _SILENT = _lc.llama_log_callback(_silent)
except Exception:  # llama-cpp-python missing: errors surface when a model is loaded
    _SILENT = None


BRANCHES = 16  # sequences decode_branches decodes in one batch beside the conversation's
BRANCH_TOKENS = 512  # tokens of all branches in one such batch (the context's n_batch); a longer branch is refused


def binding_version() -> str:
    """The llama.cpp binding that computed a saved state (KV layouts may change between versions)."""
    return f"llama-cpp-python {_lib().__version__}"


def cpu_features() -> list[str]:
    """The instruction sets the loaded CPU backend was compiled for (llama.cpp's system info, ``X = 1``): where a
    build carries several CPU variants, those of the one ggml picked for this CPU."""
    info = _lib().llama_print_system_info().decode(errors="replace")
    _, _, cpu = info.partition("CPU :")
    return [name.strip() for name, _, on in (item.partition("=") for item in cpu.split("|"))
            if on.strip() == "1" and name.strip() not in ("LLAMAFILE", "REPACK", "OPENMP")]


def openmp_build() -> bool:
    """Whether the loaded llama.cpp uses OpenMP (slow when several threads decode, see above)."""
    return b"OPENMP = 1" in _lib().llama_print_system_info()


# The token kinds llama.cpp's tokenizer matches as whole tokens when it parses special tokens (llama-vocab.cpp,
# cache_special_tokens): the values of llama.h's LLAMA_TOKEN_ATTR_CONTROL, _USER_DEFINED and _UNKNOWN.
SPECIAL_TOKEN_ATTRS = 8 | 16 | 1


class LlamaModel:
    """A GGUF model loaded once; contexts and adapters are made from it."""

    def __init__(self, path: str | Path, vocab_only: bool = False):
        """``vocab_only``: the tokenizer and metadata (chat template) without the weights, for the gateway."""
        L = _lib()
        self.L = L
        self.path = Path(path)
        params = L.llama_model_default_params()
        params.use_extra_bufts = False  # the AMX guard: see module docstring
        params.vocab_only = vocab_only
        self.ptr = L.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise LlamaError(f"{self.path}: llama.cpp could not load this model")
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_embd = L.llama_model_n_embd(self.ptr)
        self._adapters: list = []

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self.L.llama_token * cap)()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (self.L.llama_token * cap)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def encode(self, text: str) -> list[int]:
        """A prompt's token ids: special tokens parsed, a BOS first where the vocabulary wants one and the text
        does not already start with it."""
        add = bool(self.L.llama_vocab_get_add_bos(self.vocab)) and not text.startswith(self.bos_text)
        return self.tokenize(text, add_special=add, parse_special=True)

    def special_texts(self) -> tuple[str, ...]:
        """How every token that parse_special turns text into is spelled ("<|im_start|>", "<filename>"): control,
        user-defined and unknown tokens, which llama.cpp's tokenizer matches in text before anything else."""
        L, kinds = self.L, SPECIAL_TOKEN_ATTRS
        out = []
        buf = ctypes.create_string_buffer(256)
        for t in range(self.n_vocab):
            if L.llama_vocab_get_attr(self.vocab, t) & kinds:
                n = L.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, True)
                text = buf.raw[:max(n, 0)].decode("utf-8", "replace")
                if text.strip():
                    out.append(text)
        return tuple(sorted(set(out)))

    def detokenize(self, tokens: list[int]) -> str:
        """The text of ``tokens`` with special tokens written out (``<|im_start|>``) and a leading BOS left off:
        what a server that tokenizes text itself turns back into the same ids."""
        arr = (self.L.llama_token * len(tokens))(*tokens)
        cap = 8 * len(tokens) + 64
        for _ in range(2):
            buf = ctypes.create_string_buffer(cap)
            n = self.L.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, True, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = -n
        raise LlamaError("llama.cpp could not detokenize the prompt")

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing)."""
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        t = self.L.llama_vocab_get_text(self.vocab, token)
        return t.decode("utf-8", "replace") if t else ""

    def chat_template(self) -> str:
        t = self.L.llama_model_chat_template(self.ptr, None)
        if not t:
            raise LlamaError(f"{self.path}: the model has no chat template; neeko-npc needs an instruct/chat model")
        return t.decode("utf-8")

    @property
    def bos_text(self) -> str:
        return self.token_text(self.L.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        return self.token_text(self.L.llama_vocab_eos(self.vocab))

    def load_adapter(self, path: str | Path):
        ptr = self.L.llama_adapter_lora_init(self.ptr, str(path).encode())
        if not ptr:
            raise LlamaError(f"{path}: llama.cpp rejected this LoRA adapter (wrong base model or damaged file)")
        self._adapters.append(ptr)
        return ptr

    def free_adapter(self, ptr) -> None:
        """Free an adapter no context uses any more."""
        if ptr in self._adapters:
            self._adapters.remove(ptr)
            self.L.llama_adapter_lora_free(ptr)

    def new_context(self, n_ctx: int = 2048, n_threads: int | None = None) -> "LlamaContext":
        return LlamaContext(self, n_ctx, n_threads)

    def close(self) -> None:
        if self.ptr:
            for a in self._adapters:
                self.L.llama_adapter_lora_free(a)
            self._adapters = []
            self.L.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LlamaContext:
    def __init__(self, model: LlamaModel, n_ctx: int, n_threads: int | None):
        L = model.L
        self.L, self.model = L, model
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = min(n_ctx, 512)
        p.n_ubatch = min(n_ctx, 512)
        threads = n_threads or defaults.default_threads()
        p.n_threads = threads
        p.n_threads_batch = threads
        # sequence 0 is the conversation; 1..BRANCHES are short-lived branches off it (decode_branches), sharing
        # one KV cache of n_ctx cells (unified: a branch's cells are the prefix's, not a copy)
        p.n_seq_max = BRANCHES + 1
        p.kv_unified = True
        self.ptr = L.llama_init_from_model(model.ptr, p)
        if not self.ptr:
            raise LlamaError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = n_ctx
        self.n_threads = threads
        self.embeddings = False

    def set_threads(self, n: int) -> None:
        """Threads for the next decodes (the pool shares the cores among the contexts decoding at once)."""
        if n != self.n_threads:
            self.L.llama_set_n_threads(self.ptr, n, n)
            self.n_threads = n

    def set_adapters(self, adapters: list, scales: list[float]) -> None:
        """Replace the context's whole active adapter set (scale * alpha / r is applied)."""
        n = len(adapters)
        arr = (self.L.llama_adapter_lora_p_ctypes * max(n, 1))(*adapters)
        sc = (ctypes.c_float * max(n, 1))(*scales)
        if self.L.llama_set_adapters_lora(self.ptr, arr, n, sc) != 0:
            raise LlamaError("llama.cpp could not set the LoRA adapters")

    def set_embeddings(self, on: bool) -> None:
        """Whether decodes also output the final norm's hidden state (``hidden``) beside the logits. While on,
        llama.cpp outputs every token of a batch (logits too), so a prompt is read with them off."""
        if on != self.embeddings:
            self.L.llama_set_embeddings(self.ptr, on)
            self.embeddings = on

    def hidden(self) -> np.ndarray:
        """The final norm's output at the last decoded token (set_embeddings(True) before that decode)."""
        ptr = self.L.llama_get_embeddings_ith(self.ptr, -1)
        if not ptr:
            raise LlamaError("llama.cpp kept no hidden state for the last token")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,)).copy()

    def hidden_states(self, n: int) -> np.ndarray:
        """The final norm's output at each of the last decoded batch's first ``n`` tokens, one row a token
        (set_embeddings(True) before that decode; a batch is at most 512 tokens)."""
        ptrs = [self.L.llama_get_embeddings_ith(self.ptr, i) for i in range(n)]
        if not all(ptrs):
            raise LlamaError("llama.cpp kept no hidden state for some token of the last batch")
        return np.stack([np.ctypeslib.as_array(p, shape=(self.model.n_embd,)) for p in ptrs]).copy()

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ptr), True)

    def truncate(self, n_keep: int) -> None:
        """Drop every cached position from n_keep on (keep the first n_keep tokens' KV)."""
        if not self.L.llama_memory_seq_rm(self.L.llama_get_memory(self.ptr), 0, n_keep, -1):
            self.clear()
            raise LlamaError("llama.cpp could not trim the KV cache")

    def save_state(self) -> bytes:
        """The KV of every token the context holds (sequence 0), as llama.cpp serialises it."""
        n = self.L.llama_state_seq_get_size(self.ptr, 0)
        buf = (ctypes.c_uint8 * max(n, 1))()
        got = self.L.llama_state_seq_get_data(self.ptr, buf, n, 0)
        if got == 0 and n:
            raise LlamaError("llama.cpp could not copy the context's state")
        return ctypes.string_at(buf, got)

    def load_state(self, data: bytes) -> None:
        """Replace what the context holds with a state from ``save_state`` (of any context of the same model)."""
        self.clear()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self.L.llama_state_seq_set_data(self.ptr, buf, len(data), 0) == 0:
            self.clear()
            raise LlamaError("llama.cpp could not restore a saved state into this context")

    def decode(self, tokens: list[int]) -> np.ndarray:
        """Append tokens to the context; return the logits after the last one."""
        arr = (self.L.llama_token * len(tokens))(*tokens)
        for start in range(0, len(tokens), 512):
            n = min(512, len(tokens) - start)
            batch = self.L.llama_batch_get_one(ctypes.cast(ctypes.addressof(arr) + start * ctypes.sizeof(self.L.llama_token),
                                                           ctypes.POINTER(self.L.llama_token)), n)
            rc = self.L.llama_decode(self.ptr, batch)
            if rc != 0:
                raise LlamaError(f"llama_decode failed ({rc}); the context may be full")
        ptr = self.L.llama_get_logits_ith(self.ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def decode_branches(self, branches: list[list[int]], pos: int) -> list[np.ndarray]:
        """Decode each branch on top of the context's first ``pos`` tokens as if alone, all in one batch: every
        branch is a sequence of its own that shares the prefix's cells. Returns each branch's logits after each of
        its tokens (one row a token); afterwards the context holds only the prefix again. Branches go in batches of
        at most BRANCHES sequences and BRANCH_TOKENS tokens."""
        out: list[np.ndarray] = []
        group, n = [], 0
        for b in branches:
            if group and (len(group) == BRANCHES or n + len(b) > BRANCH_TOKENS):
                out += self._branches(group, pos)
                group, n = [], 0
            group.append(b)
            n += len(b)
        if group:
            out += self._branches(group, pos)
        return out

    def _branches(self, branches: list[list[int]], pos: int) -> list[np.ndarray]:
        L = self.L
        mem = L.llama_get_memory(self.ptr)
        n = sum(len(b) for b in branches)
        if not all(branches) or n > BRANCH_TOKENS:
            raise LlamaError(f"decode_branches takes non-empty branches of {BRANCH_TOKENS} tokens in all, not {n}")
        batch = L.llama_batch_init(n, 0, 1)
        try:
            i = 0
            for k, branch in enumerate(branches, start=1):
                L.llama_memory_seq_rm(mem, k, -1, -1)
                L.llama_memory_seq_cp(mem, 0, k, -1, -1)
                for j, t in enumerate(branch):
                    batch.token[i] = t
                    batch.pos[i] = pos + j
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = k
                    batch.logits[i] = 1
                    i += 1
            batch.n_tokens = n
            rc = L.llama_decode(self.ptr, batch)
            if rc != 0:
                raise LlamaError(f"llama_decode failed ({rc}); the context may be full")
            rows, i = [], 0
            for branch in branches:
                rows.append(np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(self.ptr, i + j), shape=(self.model.n_vocab,))
                                      for j in range(len(branch))]).copy())
                i += len(branch)
            return rows
        finally:
            for k in range(1, len(branches) + 1):
                L.llama_memory_seq_rm(mem, k, -1, -1)
            L.llama_batch_free(batch)

    def close(self) -> None:
        if self.ptr:
            self.L.llama_free(self.ptr)
            self.ptr = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def open_gguf_base(spec: str | Path | None, needs: str, vocab_only: bool = False):
    """The GGUF base model a llama.cpp-backed engine serves on: (BaseInfo, LlamaModel, ChatTemplate).

    ``needs`` completes the error for a base that is not a .gguf file ("the llama.cpp engine needs a .gguf base
    model; ..."); ``vocab_only`` loads the tokenizer and chat template without the weights (the gateway)."""
    ref = resolve_base_model(spec)
    if ref.kind != "gguf":
        raise BaseModelError(f"{ref.path}: {needs}")
    info = base_info(ref)
    model = LlamaModel(ref.path, vocab_only=vocab_only)
    return info, model, ChatTemplate(model.chat_template(), model.bos_text, model.eos_text)
