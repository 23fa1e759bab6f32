"""Coherence beside attribution: the base model's perplexity of a reply after its prompt (neeko/attribution.py,
reply_nll), on the real SmolLM2. Batched rows must score exactly as each row alone, and a real sentence must read
as more likely than the same words shuffled."""

import copy
import math
import random

import numpy as np
import pytest
import torch

from neeko_npc.neeko.attribution import _ids, reply_nll
from neeko_npc.neeko.intervals import perplexity
from neeko_npc.neeko.model import NeekoLoRA

pytestmark = pytest.mark.slow  # the real model

CONVERSATIONS = [
    [{"role": "system", "content": "You are Bram, the village blacksmith."}, {"role": "user", "content": "Can you mend my sword?"}],
    [{"role": "system", "content": "You are Mira, an innkeeper."}, {"role": "user", "content": "A room for the night, please."}],
    [{"role": "user", "content": "Who goes there?"}],
]
REPLIES = ["Aye, bring it to the forge before sundown and I'll have the edge back by morning.",
           "Of course. Three silver a night, and the stew is fresh.",
           "Only a tired traveller."]


def shuffled(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


@pytest.fixture(scope="module")
def neeko(gguf_base):
    _, model, tok, _ = gguf_base
    return NeekoLoRA(copy.deepcopy(model)), tok  # a copy: NeekoLoRA wraps the model's layers in place


def test_batched_rows_score_as_each_row_alone(neeko):
    neeko, tok = neeko
    sums, counts = reply_nll(neeko, tok, CONVERSATIONS, REPLIES, batch_size=3)
    for conv, reply, s, c in zip(CONVERSATIONS, REPLIES, sums, counts):
        prompt = list(_ids(tok, conv))
        answer = tok(reply, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = neeko.model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        alone = -logp[torch.arange(len(answer)), torch.tensor(answer)].sum().item()
        assert c == len(answer) and s == pytest.approx(alone, rel=1e-4)


def test_real_sentences_read_as_more_likely_than_their_words_shuffled(neeko):
    neeko, tok = neeko
    real = perplexity(*reply_nll(neeko, tok, CONVERSATIONS, REPLIES))
    mixed = perplexity(*reply_nll(neeko, tok, CONVERSATIONS, [shuffled(r) for r in REPLIES]))
    assert math.isfinite(real["value"]) and real["value"] < mixed["value"]
    assert real["ci"][0] <= real["value"] <= real["ci"][1]


def test_perplexity_is_the_token_weighted_mean():
    got = perplexity(np.array([2.0, 6.0]), np.array([1, 3]), n=200)
    assert got["value"] == pytest.approx(math.exp(8 / 4)) and got["ci"][0] <= got["value"] <= got["ci"][1]
    assert math.isnan(perplexity(np.array([]), np.array([]))["value"])
