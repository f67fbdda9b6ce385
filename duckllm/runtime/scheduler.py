"""The scheduler: runs the answer programs of many rows on one context, with continuous batching.

All rows of a call share one evaluated prompt prefix (KV sequence 0, copied by reference to each
row's sequence) and are decoded together as parallel sequences: each llama_decode carries the
next tokens of every row in flight and the prompts of rows just admitted. A row's text is cut to
fit the context (fit); its program's steps are decided by the decoders (decoders.py).
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from duckllm.engine import cancel
from duckllm.errors import ArgumentError, ModelError
from duckllm.runtime import Answer, Pick, Program, Prompt, Say, Text, Usage, decoders
from duckllm.runtime.decoders import Constraints, Picking, TakeBack, Writing
from duckllm.runtime.device import Sizes
from duckllm.runtime.llama_resources import Batch, Context, Vocab
from duckllm.runtime.logprobs import Normalisers, Output

PREFIX_SEQ = 0


@dataclass
class _Row:
    """One row in flight: its KV sequence, next position, and its answer program's state."""
    index: int
    seq: int
    pos: int
    end: int                              # first KV position past the cells reserved for it
    truncated: bool
    program: object                       # the row's answer program (a generator)
    step: object = None                   # the decision step in progress (Picking, Writing)
    reply: object = None                  # what the program is sent next
    ended: bool = False                   # the answer's end token was chosen: nothing may follow
    prompt_left: int = 0                  # prompt tokens not yet fed (counted apart from answers)
    prompt: tuple = ()                    # its prompt's tokens (guesses for written values)
    value: object = None
    done: bool = False


@dataclass
class _Feed:
    """Tokens to feed a row next; calls: (j, callback) for each j whose logits are wanted, in order."""
    row: _Row
    tokens: list[int]
    calls: list


class Scheduler:
    """Runs rows on a context it borrows (LlamaRuntime owns it and holds the lock around calls)."""

    def __init__(self, context: Context, batch: Batch, vocab: Vocab, sizes: Sizes, usage: Usage):
        self.context, self.batch, self.vocab, self.sizes, self.usage = context, batch, vocab, sizes, usage
        self.n_ctx = context.n_ctx
        self.constraints = Constraints(vocab)
        self.prefix: list[int] = []       # the tokens sequence 0 holds
        self.prefix_states = None         # runtime.prefix_store.ContextStates: prefixes kept on disk
        self._alone = False               # one row in flight and none waiting (guesses)
        self._feeds: list[_Feed] = []     # what the next decode feeds
        self.normalisers = Normalisers(sizes.host_threads)

    # ---- a call's rows ---------------------------------------------------------------------

    def run(self, prompt: Prompt, texts: Sequence[str], program: Callable[[int, int], Program],
            answer_tokens: Callable[[int], int], on_done: Callable[[int, Answer], None] | None = None,
            row_prefixes: Sequence[Text] | None = None) -> list[Answer]:
        """Continuous batching: the shared prefix is evaluated once (sequence 0); rows take free
        sequences as earlier rows finish, so one llama_decode carries new rows' prompts and the
        answer tokens of rows in flight together.

        A finished row's cells are freed only when every row of its epoch has finished: llama.cpp
        fills the lowest free cells first, and a row whose later tokens went into cells before its
        earlier ones would be attended in another order, and round differently, than alone."""
        shared = self.vocab.tokenize_prompt(prompt.shared, add_bos=self.vocab.add_bos)
        tail = self.vocab.tokenize(prompt.tail, special=True)
        if len(shared) + len(tail) >= self.n_ctx:     # said before llama.cpp fails on it
            raise ArgumentError(f"the instructions, labels and examples take {len(shared) + len(tail)} "
                                f"tokens, more than the model's context of {self.n_ctx}; shorten them "
                                f"(for many labels, preselect := 32 lists only the likeliest with each "
                                f"row) or set DUCKLLM_CONTEXT higher")
        self.ensure_prefix(shared)
        room = self.n_ctx - len(shared) - self.sizes.min_batch      # - the cells padding takes (_decode)
        results: list = [None] * len(texts)
        pending = deque(range(len(texts)))
        new_epoch = lambda: list(range(self.sizes.row_seqs, 0, -1))
        free_seqs = new_epoch()
        in_flight: dict[int, _Row] = {}
        used = 0                    # KV cells held by this epoch's rows: reserved or, once finished, used
        ahead: deque = deque()      # the next rows' fitted prompts, tokenized together while the
                                    # tokenizer's tables are in the cache (a decode's logits evict them)
        self._feeds = []

        def fitted(i):
            own = self.vocab.tokenize_prompt(row_prefixes[i]) if row_prefixes else []
            tokens, n_text, limit, truncated = self.fit(texts[i], tail, answer_tokens, room - len(own))
            return i, own + tokens, n_text, limit, truncated
        try:
            while pending or self._feeds:
                cancel.check()
                admitted = []
                while pending and len(in_flight) < self.sizes.n_parallel:
                    if not ahead:
                        ahead.extend(fitted(i) for i in itertools.islice(pending, self.sizes.n_parallel))
                    i, tokens, n_text, limit, truncated = ahead[0]
                    if not free_seqs or used + len(tokens) + limit > room:
                        if in_flight:
                            break   # the epoch is full: wait for its rows in flight to finish
                        self.free_rows(free_seqs)
                        free_seqs, used = new_epoch(), 0
                    pending.popleft()
                    ahead.popleft()
                    row = _Row(index=i, seq=free_seqs.pop(), pos=len(shared), truncated=truncated,
                               end=len(shared) + len(tokens) + limit, program=program(i, n_text))
                    self.context.seq_cp(PREFIX_SEQ, row.seq)
                    in_flight[row.seq] = row
                    used += row.end - row.pos
                    row.prompt_left = len(tokens)
                    row.prompt = tuple(tokens)
                    self._advance(row, None, said=tokens)
                    admitted.append(row)
                feeds, self._feeds = self._feeds, []
                self._alone = len(in_flight) == 1 and not pending
                self._decode_feeds(feeds)
                for row in admitted + [feed.row for feed in feeds]:
                    if row.done and row.seq in in_flight:
                        results[row.index] = Answer(row.value, row.truncated)
                        if on_done:
                            on_done(row.index, results[row.index])
                        del in_flight[row.seq]
                        used -= row.end - row.pos     # the cells it reserved but did not use
        finally:
            self._feeds = []
            self.free_rows(free_seqs)      # done or interrupted: leave no cells behind
        return results

    def close(self) -> None:
        self.normalisers.close()

    def free_rows(self, unused: list[int]) -> None:
        """Free every row's cells, and its share of the prefix's (a later prefix may differ).
        unused: the row sequences this epoch has not taken (each seq_rm scans the cells)."""
        for seq in set(range(1, self.sizes.row_seqs + 1)).difference(unused):
            self.context.seq_rm(seq)

    def _advance(self, row: _Row, out: Output | None, said=()) -> None:
        """Drive a row's program: its decision step takes the logits after the row's last fed
        token; a finished step's result goes to the program, whose Say texts are gathered and
        fed before its next decision. out is None where nothing new was fed."""
        said = list(said)
        while True:
            step = row.step
            if step is not None and step.result is None:
                fed = step.take(out, lambda o: self._advance(row, o))
                if fed:
                    self._feeds.append(_Feed(row, [t for t, _ in fed], [(j, c) for j, (_, c) in enumerate(fed) if c]))
                    return
            if step is not None:
                row.reply, row.step = step.result, None
                row.ended = row.ended or step.ended
            try:
                nxt = row.program.send(row.reply)
            except StopIteration as stop:
                row.value, row.done = stop.value, True
                return
            if row.ended:
                raise ModelError("an answer program went on after its answer ended (a bug in duckllm)")
            row.reply = None
            if isinstance(nxt, Say):
                said += self.vocab.tokenize(nxt.text)
                continue
            row.step = (Picking(nxt, self.constraints) if isinstance(nxt, Pick) else
                        Writing(nxt, row.end - row.pos - len(said), self.constraints, self._guesser(row)))
            if said:      # the decision needs the logits after what was said
                self._feeds.append(_Feed(row, said, [(len(said) - 1, lambda o: self._advance(row, o))]))
                return
            if out is None:
                raise ModelError("an answer program decided before anything was fed (a bug in duckllm)")

    def _guesser(self, row: _Row):
        """Guesses for a value the row writes while it is decoded alone. On the CPU every batch
        carries at least min_batch tokens (CPU_MIN_BATCH), so rather than pad a lone token, the
        slots check guesses (decoders.guesses)."""
        most = self.sizes.min_batch - 1
        return lambda written, limit: decoders.guesses(row.prompt, written, min(limit, most)) if self._alone else []

    def _take_back(self, row: _Row, n: int) -> None:
        """Unfeed the row's last n tokens."""
        row.pos -= n
        self.usage.generated_tokens -= n
        self.context.seq_rm(row.seq, row.pos)

    # ---- fitting a row ---------------------------------------------------------------------

    def fit(self, text: str, tail: list[int], answer_tokens: Callable[[int], int], room: int):
        """A row's tokens, its text cut so text + tail + its answer's bound fit the room left after
        the prefix: the longest cut that fits, taken from its longest parts (runtime.Parts).
        Returns (tokens, text tokens kept, the answer's bound, whether the text was cut)."""
        avail = room - len(tail)
        parts = [self.vocab.tokenize(text)]
        n = total = len(parts[0])
        if n + answer_tokens(n) > avail:
            parts = [self.vocab.tokenize(part) for part in getattr(text, "parts", (text,))]   # cut apart
            n = total = sum(len(p) for p in parts)
            lo, hi = 0, n
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if mid + answer_tokens(mid) <= avail else (lo, mid - 1)
            n = lo
        if n < 1:
            raise ArgumentError(f"the instructions and labels take {self.n_ctx - avail} of the model's "
                                f"{self.n_ctx} context tokens and the answer up to {answer_tokens(1)} more, "
                                f"leaving no room for the text; shorten them, ask for a shorter answer "
                                f"(max_tokens, max_entities) or set DUCKLLM_CONTEXT higher")
        kept = [p[:k] for p, k in zip(parts, shares([len(p) for p in parts], n))]
        return [t for p in kept for t in p] + tail, n, answer_tokens(n), n < total

    # ---- the shared prefix -----------------------------------------------------------------

    def prefix_ready(self, shared: list[int]) -> bool:
        """Whether ensure_prefix(shared) would find it held or kept on disk: nothing to evaluate."""
        states = self.prefix_states
        return shared == self.prefix or (states is not None and states.kept(shared))

    def ensure_prefix(self, shared: list[int]) -> None:
        """Make sequence 0 hold the shared prefix, evaluating only where it differs from the one
        held, or loading it from the prefix store (and keeping it there once evaluated): the one
        place a call's shared prompt turns into KV cells."""
        keep = 0
        while keep < min(len(shared), len(self.prefix)) and shared[keep] == self.prefix[keep]:
            keep += 1
        if keep == len(shared) == len(self.prefix):
            return
        states = self.prefix_states
        if states is not None and states.worth(shared):
            # kept on disk: all of it from cell 0, loaded or evaluated, in the cells a new process fills
            self.context.clear()
            self.prefix, keep = [], 0
            if states.restore(PREFIX_SEQ, shared):
                self.prefix = list(shared)
                return
        self.context.seq_rm(PREFIX_SEQ, keep)
        self.prefix = shared[:keep]   # what sequence 0 holds, should the decode below fail
        self._decode(shared[keep:], list(range(keep, len(shared))), [PREFIX_SEQ] * (len(shared) - keep))
        self.prefix = list(shared)
        if states is not None and keep == 0:
            states.save(PREFIX_SEQ, shared)

    def time_prompt(self, tokens: list[int], after_prefix: bool = False) -> float:
        """Seconds to evaluate tokens as one prompt in the scratch sequence, fresh or after the
        shared prefix held now (each token then attends over it, as a row's do)."""
        start = len(self.prefix) if after_prefix else 0
        scratch = self.sizes.scratch_seq
        n = len(tokens)
        try:
            self._decode(tokens[:8], list(range(min(n, 8))), [scratch] * min(n, 8))   # pages the weights in
            self.context.seq_rm(scratch)
            if start:
                self.context.seq_cp(PREFIX_SEQ, scratch)
            began = time.perf_counter()
            self._decode(tokens, list(range(start, start + n)), [scratch] * n, [(n - 1, None, None)])
            return time.perf_counter() - began
        finally:
            self.context.seq_rm(scratch)

    # ---- llama_decode ----------------------------------------------------------------------

    def _decode_feeds(self, feeds: list[_Feed]) -> None:
        tokens, pos, seqs, outputs = [], [], [], []
        for feed in feeds:
            row, n = feed.row, len(feed.tokens)
            if row.pos + n > row.end:
                raise ModelError(f"an answer outgrew the {row.end - row.pos} KV cells reserved for it "
                                 f"(a bug in duckllm: please report it)")
            n_prompt = min(row.prompt_left, n)    # a row's first feed holds its prompt
            row.prompt_left -= n_prompt
            self.usage.prompt_tokens += n_prompt
            self.usage.generated_tokens += n - n_prompt
            outputs += [(len(tokens) + j, row, c) for j, c in feed.calls]
            tokens += feed.tokens
            pos += range(row.pos, row.pos + n)
            seqs += [row.seq] * n
            row.pos += n
        self._decode(tokens, pos, seqs, outputs)

    def _decode(self, tokens: list[int], pos: list[int], seqs: list[int], outputs: list = ()) -> None:
        """Decode tokens in even chunks of at most n_batch, a chunk under min_batch padded with
        throwaway tokens. outputs: (j, row, callback), in order of j, for each token j whose logits
        are wanted; each callback gets them (callback None: a measurement's, wanted for nobody).
        The logits are llama.cpp's own buffer, valid only during the chunk, so no vocabulary-sized
        copy is kept."""
        if not tokens:
            return
        n_chunks = -(-len(tokens) // self.sizes.n_batch)
        size = -(-len(tokens) // n_chunks)
        scratch = self.sizes.scratch_seq
        token, position, seq = (np.asarray(a, np.int32) for a in (tokens, pos, seqs))
        wants = np.zeros(len(tokens), np.int8)
        wants[[j for j, _, _ in outputs]] = 1
        given = 0               # outputs given to their callbacks so far
        for start in range(0, len(tokens), size):
            if start:       # a long prompt takes several batches: Ctrl-C need not wait for all
                cancel.check()
            end = min(start + size, len(tokens))
            chunk = [token[start:end], position[start:end], seq[start:end], wants[start:end]]
            padding = max(0, self.sizes.min_batch - (end - start))
            if padding:     # throwaway copies of the chunk's first token in the scratch sequence
                pad = np.full(padding, token[start]), np.arange(padding), np.full(padding, scratch), np.zeros(padding)
                chunk = [np.concatenate([a, p.astype(a.dtype)]) for a, p in zip(chunk, pad)]
            self.batch.fill(*chunk)
            rc = self.context.decode(self.batch)
            if padding:
                self.context.seq_rm(scratch)
            if rc != 0:
                raise ModelError(f"llama_decode failed with code {rc} (the KV cache is full or the "
                                 f"input is invalid); set DUCKLLM_CONTEXT higher or DUCKLLM_PARALLEL lower")
            n = int(np.count_nonzero(chunk[3]))
            if n and outputs[given][2]:
                self._observe(self.context.logits(n), outputs[given:given + n])
            given += n

    def _observe(self, logits: np.ndarray, outputs: list) -> None:
        """Give each output's callback its logits and their normaliser over the vocabulary, the
        normalisers of all of a decode's outputs computed together."""
        for row_logits, normaliser, (_, row, callback) in zip(logits, self.normalisers(logits), outputs):
            out = Output(row_logits, normaliser)
            if isinstance(took := callback(out), TakeBack):
                self._take_back(row, took.n)
                self._advance(row, out)


def shares(lengths: list[int], n: int) -> list[int]:
    """How many of each part's tokens to keep, n in all: every part up to one cap, the longest cut
    to it (the first of them keep one more where n is not reached evenly)."""
    if sum(lengths) <= n:
        return list(lengths)
    cap = max(c for c in range(n + 1) if sum(min(length, c) for length in lengths) <= n)
    shares = [min(length, cap) for length in lengths]
    for i, length in enumerate(lengths):
        if sum(shares) < n and length > cap:
            shares[i] += 1
    return shares
