"""The simulator's tokens: its vocabulary, prompt tokenization, logprobs and vLLM's stop-string
handling, as pure functions (the engine in sim.py only adds timing).

- Vocabulary: token id `i` < len(BASE) is a word of the simulator's vocabulary (with a
  leading space) or a punctuation mark; larger ids up to VOCAB_SIZE decode to " t<i>", so
  token-id prompts of any Llama-sized vocabulary are served. An id outside is a 400, as vLLM's
  "Token id ... is out of vocabulary".
- Logprobs are the simulator's own word distribution at temperature 1 (vLLM reports raw
  logprobs by default, before temperature): the sampled token's logprob, then the top-k
  words by rank in the same surface form (space, capital, period), as vLLM's logprob dict
  orders them (vllm/logprobs.py: sampled first, then ranks 1..k, duplicates dropped).
- Stop strings (`stop_pieces`) follow vllm/v1/engine/detokenizer.py: after each token the new
  text is searched for a stop string; a match truncates the text at its start (at its end
  with include_stop_str_in_output) and finishes with stop_reason = the string; the token that
  completed it is counted, later ones are not. While streaming, the last max(len(stop)) - 1
  characters are held back until the choice finishes, so no part of a stop string that
  spans tokens ever reaches the client.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

from vllm_canary.server.engines.base import EngineError, Prompt, TokenLogprob

_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
# Longer texts are split one match per regex call: findall on 4 MB is one 0.3 s C call that
# holds the GIL, so even off the event loop it would stall it (see SimEngine.generate).
LONG_TEXT = 64 * 1024
VOCAB_SIZE = 32000  # ids a token-id prompt may use (Llama's vocabulary size)


def split_tokens(text: str) -> list[str]:
    """Word-level tokens whose concatenation is `text` (whitespace joins the next token;
    trailing whitespace joins the last)."""
    pieces = _PIECE.findall(text) if len(text) <= LONG_TEXT else \
        [m[0] for m in _PIECE.finditer(text)]
    rest = text[sum(map(len, pieces)):]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces = [rest]
    return pieces


def count_tokens(text: str) -> int:
    """The simulator's token count of a text: close enough to BPE for latency and limits."""
    if len(text) <= LONG_TEXT:
        return len(_PIECE.findall(text))
    return sum(1 for _ in _PIECE.finditer(text))


class Vocabulary:
    """Token ids <-> surface strings, and the word distribution the logprobs come from."""

    def __init__(self, words: Sequence[str]) -> None:
        distinct = list(dict.fromkeys(words))
        self.base = [" " + w for w in distinct] + [".", ",", "?", "!", ":", ";"]
        weights = dict.fromkeys(distinct, 0.0)
        for rank, w in enumerate(words):  # the sampler's Zipf weights at temperature 1
            weights[w] += 1.0 / (rank + 1)
        total = sum(weights.values())
        ranked = sorted(distinct, key=lambda w: -weights[w])
        self.logprob = {w: math.log(weights[w] / total) for w in distinct}
        self.ranked = [(w, self.logprob[w]) for w in ranked]

    def decode(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if not 0 <= i < VOCAB_SIZE:
                raise EngineError(400, f"Token id {i} is out of vocabulary (the sim engine "
                                  f"has {VOCAB_SIZE} tokens)", "invalid_request_error",
                                  param="prompt")
            out.append(self.base[i] if i < len(self.base) else f" t{i}")
        return out


def prompt_tokens(prompt: Prompt, vocab: Vocabulary) -> list[str]:
    """The prompt's tokens: its text split, or its token ids decoded."""
    return split_tokens(prompt) if isinstance(prompt, str) else vocab.decode(prompt)


def _surface(token: str, word: str) -> str:
    """`word` written the way `token` is (leading space, capital, trailing period)."""
    core = token.strip()
    head = token[: len(token) - len(token.lstrip())]
    tail = "." if core.endswith(".") and len(core) > 1 else ""
    return head + (word.capitalize() if core[:1].isupper() else word) + tail


def _hash_unit(*parts: object) -> float:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def token_logprob(token: str, k: int, vocab: Vocabulary, *, key: str,
                  forced: bool = False) -> TokenLogprob:
    """A plausible logprob entry for `token` with its top-`k` alternatives. Words get the
    vocabulary's probability; `forced` tokens (JSON syntax, prompt tokens that are not words)
    get a confident or a hashed logprob, with vocabulary words as distant alternatives."""
    word = token.strip().rstrip(".").lower()
    if not forced and word in vocab.logprob:
        own = vocab.logprob[word]
        alts = [(_surface(token, w), lp) for w, lp in vocab.ranked[:k]]
    else:
        own = -0.001 - 0.05 * _hash_unit(key, token) if forced else -1 - 6 * _hash_unit(key)
        alts = [(_surface(token, w) if token.strip().isalpha() else " " + w, own - 6 - r)
                for r, (w, _) in enumerate(vocab.ranked[:k])]
        if own > max((lp for _, lp in alts), default=-math.inf):
            alts = [(token, own), *alts][:k]
    top = dict([(token, own), *alts])
    return TokenLogprob(token, round(own, 6), tuple((t, round(v, 6)) for t, v in top.items()))


def prompt_logprobs(tokens: list[str], k: int, vocab: Vocabulary, key: str) -> list[TokenLogprob]:
    """Echoed prompt tokens: the first has no logprob (no context), as in vLLM."""
    out = [TokenLogprob(tokens[0], None)] if tokens else []
    out += [token_logprob(t, k, vocab, key=f"{key}|p{i}") for i, t in enumerate(tokens[1:])]
    return out


def _find_stop(text: str, new_chars: int, stops: Sequence[str],
               include: bool) -> tuple[str, int] | None:
    """vLLM's check_stop_strings: (stop string, truncate-to offset or -1) for the stop
    string that completes earliest in the new text."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        if not stop:
            continue
        at = text.find(stop, 1 - new_chars - len(stop))
        if at != -1 and (best is None or at + len(stop) < best[0]):
            best = (at + len(stop), at, stop)
    if best is None:
        return None
    end, at, stop = best
    if include:
        return stop, (-1 if end >= len(text) else end)
    return stop, at


def stop_pieces(tokens: Sequence[str], stops: Sequence[str],
                include: bool) -> tuple[list[str], str | None]:
    """The text each generated token adds to a stream, under vLLM's stop-string rules (see
    the module docstring). Returns one piece per token kept (the list stops at the token
    that completed a stop string) and the matched stop string, or None."""
    stops = [s for s in stops if s]  # (the front refuses "", as vLLM does)
    hold = max((len(s) for s in stops), default=1) - 1 if stops and not include else 0
    text, sent, pieces = "", 0, []
    for i, token in enumerate(tokens):
        text += token
        hit = _find_stop(text, len(token), stops, include) if stops else None
        if hit is not None:
            stop, cut = hit
            if cut != -1:
                text = text[:cut]
            pieces.append(text[sent:])
            return pieces, stop
        end = len(text) if i == len(tokens) - 1 else max(sent, len(text) - hold)
        pieces.append(text[sent:end])
        sent = end
    return pieces, None
