"""Constrained decoders: how a Pick or a Write step chooses its tokens from the logits.

Pure logic over logits (numpy) and a small vocabulary interface: a decoder never touches llama.cpp
or the scheduler. Given the logits after a row's last fed token, a decoder's take() returns what
to feed next, as (token, callback) pairs: the scheduler decodes each token and calls its callback
with the logits after it (None: nothing is wanted after that token). A callback returns None, or
TakeBack(n) when the row's last n fed tokens must be unfed (a guess that decoding did not pick).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from duckllm.errors import ArgumentError
from duckllm.runtime import Choice, Generation, Pick, Write
from duckllm.runtime.logprobs import Output, logsumexp

SPAN_CANDIDATES = 64      # a span's next token is the likeliest of this many that stays in the source
KIND_CHARS = {            # what integer and number values may be written with ('null', 'n/a' too)
    "integer": set(" 0123456789-+,nul/a"),
    "number": set(" 0123456789-+.,eE%nul/a"),
}
MAX_TRIES = 64            # option tries kept per vocabulary before the cache starts over


class Vocabulary(Protocol):
    end_tokens: list[int]            # the prompt format's end-of-turn marker

    def tokenize(self, text: str) -> list[int]: ...          # plain text: no control tokens

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def piece_texts(self) -> list[str]: ...                   # every token's text ('' for control tokens)

    def is_end(self, token: int) -> bool: ...                 # ends the answer


@dataclass(frozen=True)
class TakeBack:
    """Unfeed the row's last n tokens, then go on from the logits the callback was given."""
    n: int


Callback = Callable[[Output], "TakeBack | None"]
Advance = Callable[[Output | None], None]       # the scheduler's: go on with the row's program


class Node:
    """A node of an options' token trie. Below a node where one option is left, index and path
    name it: decoding can stop choosing there."""
    __slots__ = ("children", "options", "index", "path", "tokens", "nodes")

    def __init__(self):
        self.children: dict[int, Node] = {}
        self.options: list[int] = []          # the options whose paths pass through this node
        self.index: int | None = None
        self.path: list[int] | None = None
        self.tokens = np.zeros(0, np.int64)   # the children's tokens, in order, as an array ...
        self.nodes: list[Node] = []           # ... and their nodes


def trie(paths: list[list[int]]) -> Node:
    """A token trie of the options' paths (an option's tokens and then its stop or end token)."""
    root = Node()
    for index, path in enumerate(paths):
        node = root
        for token in path:
            node = node.children.setdefault(token, Node())
            node.options.append(index)
    if len({tuple(p) for p in paths}) != len(paths):
        raise ArgumentError("two labels tokenize identically; make the labels differ in more than case or spacing")

    def mark(node):
        node.tokens = np.fromiter(node.children, dtype=np.int64, count=len(node.children))
        node.nodes = list(node.children.values())
        for child in node.nodes:
            if len(child.options) == 1:
                child.index = child.options[0]
                child.path = paths[child.index]
            else:
                mark(child)
    mark(root)
    return root


def prior_mass(prior: tuple[float, ...], node: Node) -> np.ndarray:
    """log of the prior probability of the options below each of a node's children (the end of
    an or_end Pick has no prior: 1)."""
    return np.asarray([logsumexp(np.asarray([prior[i] if i < len(prior) else 0.0 for i in child.options]))
                       for child in node.nodes])


class Constraints:
    """What a vocabulary allows, made once and kept: the options' tries, the kinds' token masks."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self._tries: dict = {}
        self._masks: dict = {}

    def trie(self, options: tuple[str, ...], stop: str | None, or_end: bool) -> tuple[Node, list[int]]:
        """The options' token trie, and each option's content length (its tokens before the stop)."""
        key = (options, stop, or_end)
        if key not in self._tries:
            v = self.vocab
            closing = v.end_tokens if stop is None else v.tokenize(stop)
            paths = [v.tokenize(o) + closing for o in options] + ([list(v.end_tokens)] if or_end else [])
            content = [len(p) - len(closing) for p in paths[:len(options)]] + ([0] if or_end else [])
            if len(self._tries) > MAX_TRIES:
                self._tries.clear()
            self._tries[key] = (trie(paths), content)
        return self._tries[key]

    def mask(self, kind: str, stop: str | None, or_end: bool) -> tuple[np.ndarray, np.ndarray]:
        """(tokens a value of this kind may take next, those of them that close it with its stop);
        the end token is allowed when the value may end the answer."""
        key = (kind, stop, or_end)
        if key not in self._masks:
            chars = KIND_CHARS.get(kind)
            pieces = self.vocab.piece_texts()
            go, close = np.zeros(len(pieces), bool), np.zeros(len(pieces), bool)
            for t, piece in enumerate(pieces):
                if not piece:
                    continue
                if stop and stop in piece:
                    before = piece.split(stop, 1)[0]
                    close[t] = chars is None or all(c in chars for c in before)
                else:
                    go[t] = chars is None or all(c in chars for c in piece)
            allowed = go | close
            if stop is None or or_end:
                allowed[self.vocab.end_tokens] = True
            self._masks[key] = (allowed, close)
        return self._masks[key]


class Picking:
    """A Pick in progress: walk the options' trie, choosing the likeliest allowed token where
    options diverge; once one option is left, feed its remaining tokens in one go, scoring them.
    A stop token (or the end token) tells an option from a longer one it prefixes; it is fed
    but not part of the option's tokens."""

    def __init__(self, step: Pick, constraints: Constraints):
        self.step = step
        self.node, self.content = constraints.trie(step.options, step.stop, step.or_end)
        self.depth = 0
        self.logprobs: list[float] = []
        self.choice_logprob = 0.0
        self.branches: list[dict[int, float]] = []
        self.result: Choice | None = None
        self.ended = False

    def take(self, out: Output, advance: Advance) -> list:
        node = self.node
        scores = out.logits[node.tokens]
        logprobs = out.logprobs(node.tokens)
        self.branches.append(dict(zip(node.tokens.tolist(), logprobs.tolist())))
        if self.step.prior:                   # each branch less the prior mass of the options below it
            scores = scores - prior_mass(self.step.prior, node)
        k = int(np.argmax(scores))
        pick = int(node.tokens[k])
        self.choice_logprob += float(scores[k]) - logsumexp(scores)
        self.node = node = node.nodes[k]
        if self.depth < self.content[node.options[0]]:
            self.logprobs.append(float(logprobs[k]))
        self.depth += 1
        if node.index is None:                # options still diverge below: decode the next token
            return [(pick, advance)]
        index, path = node.index, node.path
        self.result = Choice(index, self.logprobs, self.choice_logprob, self.branches)
        self.ended = self.step.stop is None or index == len(self.step.options)
        fed = [pick] + path[self.depth:]      # fed[j] is followed by path[depth + j]
        callbacks: list = [None] * len(fed)
        if self.step.score_rest:
            for j in range(len(fed) - 1):
                if self.depth + j < self.content[index]:
                    callbacks[j] = self._scorer(path[self.depth + j])
        if not self.ended:
            callbacks[-1] = advance
            return list(zip(fed, callbacks))
        scored = [j for j, c in enumerate(callbacks) if c]
        if not scored:                        # nothing left to score: the end token is never fed
            return []
        last = scored[-1]
        score_last = callbacks[last]

        def score_and_end(out: Output) -> None:
            score_last(out)
            advance(None)
        callbacks[last] = score_and_end
        return list(zip(fed[:last + 1], callbacks[:last + 1]))

    def _scorer(self, token: int) -> Callback:
        return lambda out: self.logprobs.append(out.logprob(token))


def guesses(prompt: Sequence[int], written: list[int], limit: int) -> list[int]:
    """Up to limit tokens that followed the value's last written ones in the row's prompt (a
    cleaned or extracted value mostly copies it): the longest recent run found, its last place."""
    if limit < 1:
        return []
    for n in (3, 2, 1):
        if len(written) < n:
            continue
        tail = tuple(written[-n:])
        for start in range(len(prompt) - n, -1, -1):
            if tuple(prompt[start:start + n]) == tail and start + n < len(prompt):
                return list(prompt[start + n:start + n + limit])
    return []


class Writing:
    """A Write in progress: the likeliest token its kind allows, until its stop (a token that
    holds the stop closes the value), the end token (when it has no stop) or its token limit.

    guess(written, limit) may offer tokens likely to follow (guesses()): they are fed at once
    and each is kept only where decoding picks it anyway, so the value is the one decoding
    without guesses gives; a wrong guess and those after it are taken back."""

    def __init__(self, step: Write, room: int, constraints: Constraints,
                 guess: Callable[[list[int], int], list[int]] = lambda written, limit: []):
        self.step, self.vocab, self.guess = step, constraints.vocab, guess
        self.stop_tokens = self.vocab.tokenize(step.stop) if step.stop else []
        self.max_tokens = max(1, min(step.max_tokens, room - len(self.stop_tokens) - 1))
        self.masks = (constraints.mask(step.kind, step.stop, step.or_end)
                      if step.kind in KIND_CHARS or step.stop else None)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.result: Generation | None = None
        self.ended = False

    def take(self, out: Output, advance: Advance) -> list:
        token, closes = self._pick(out.logits)
        if token is None:                      # a span with nowhere left to go in its source
            self._set_result()
            return self._write_stop(advance)
        if self.vocab.is_end(token):
            self._set_result(ended=True)
            return []
        logprob = out.logprob(token)
        if closes:                             # e.g. '\n' or '.\n': keep what precedes the stop
            closing = self.vocab.piece_texts()[token].split(self.step.stop, 1)[0]
            if closing:
                self.logprobs.append(logprob)
            self._set_result(closing=closing)
            return [(token, advance)]
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if len(self.tokens) >= self.max_tokens:
            self._set_result(hit_limit=True)
            return [] if self.ended else [(token, None)] + self._write_stop(advance)
        guessed = self.guess(self.tokens, self.max_tokens - len(self.tokens) - 1)
        if not guessed:
            return [(token, advance)]
        wrong: list = []    # set once a guess is wrong: the logits after it are void
        checks = [self._check(guessed, j, wrong, advance) for j in range(len(guessed) + 1)]
        return list(zip([token] + guessed, checks))

    def _check(self, guessed: list[int], j: int, wrong: list, advance: Advance) -> Callback:
        """The callback for the logits after guess j (after the written token for j = 0): keep
        guess j + 1 if decoding picks it as a plain next token; else take back the guesses from it
        on and decide from these logits as if nothing had been guessed."""
        def check(out: Output) -> TakeBack | None:
            if wrong:
                return None
            if j < len(guessed):
                token, closes = self._pick(out.logits)
                if (token == guessed[j] and not closes and not self.vocab.is_end(token)
                        and len(self.tokens) + 1 < self.max_tokens):
                    self.tokens.append(token)
                    self.logprobs.append(out.logprob(token))
                    return None
                wrong.append(j)
                return TakeBack(len(guessed) - j)
            advance(out)
            return None
        return check

    def _set_result(self, ended=False, hit_limit=False, closing="") -> None:
        self.ended = ended or self.step.stop is None
        self.result = Generation(self.vocab.detokenize(self.tokens) + closing, self.logprobs,
                                 hit_limit=hit_limit, ended=self.ended)

    def _write_stop(self, advance: Advance) -> list:
        if self.ended:
            return []
        return [(t, None) for t in self.stop_tokens[:-1]] + [(self.stop_tokens[-1], advance)]

    def _pick(self, logits: np.ndarray) -> tuple[int | None, bool]:
        if self.step.kind == "span":
            return self._pick_span(logits)
        if self.masks is None:                 # free text to the end of the answer
            return int(np.argmax(logits)), False
        allowed, close = self.masks
        token = int(np.argmax(np.where(allowed, logits, -np.inf)))
        return token, bool(close[token])

    def _pick_span(self, logits: np.ndarray) -> tuple[int | None, bool]:
        """The likeliest of the top candidates that keeps the value a piece of the source."""
        source, stop, pieces = self.step.source or "", self.step.stop, self.vocab.piece_texts()
        value = self.vocab.detokenize(self.tokens)
        top = np.argpartition(logits, -SPAN_CANDIDATES)[-SPAN_CANDIDATES:]
        for token in top[np.argsort(-logits[top])]:
            token = int(token)
            if self.vocab.is_end(token):
                if (stop is None or self.step.or_end) and value.strip():
                    return token, False
                continue
            piece = pieces[token]
            if not piece:
                continue
            if stop and stop in piece:
                if value.strip() and (value + piece.split(stop, 1)[0]).strip() in source:
                    return token, True
                continue
            candidate = (value + piece).lstrip()
            if candidate and candidate in source:
                return token, False
        return None, False
