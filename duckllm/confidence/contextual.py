"""Contextual calibration (Zhao et al. 2021), label-free: a label set in a prompt biases a model
toward some labels; the model's label distribution for content-free inputs ('N/A', an empty
text, '[MASK]') estimates that prior, and each decision divides it out.

The prior is measured once per task and model (each label's whole path scored after each
content-free input, normalised over the labels, averaged over the inputs) and kept beside the
calibrations (stored.py), keyed by the model file and the task key. Decoding then chooses, where
labels diverge, by P(branch | text) / P(branch | content-free) (runtime Pick.prior), so the label
and its `choice` confidence change; `mean_token` stays the model's own probability.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from duckllm.confidence.stored import store_at
from duckllm.runtime import Pick, single

CONTENT_FREE = ("N/A", " ", "[MASK]")   # the empty one as a space: a row needs a token
SUFFIX = "#content-free"                # beside the task's key in the calibrations table


@dataclass(frozen=True)
class Contextual:
    """What a task calibrated without labels gives the engine: its labels, and its program
    given their content-free log-priors."""
    labels: tuple[str, ...]
    program: Callable[[dict[str, float]], Callable]


def measure(runtime, task) -> dict[str, float]:
    """log P(label) on the content-free inputs: each label's path scored, softmax over the
    labels per input, averaged over the inputs."""
    labels = task.contextual.labels
    prompt = runtime.format.split(list(task.messages))
    texts = [task.render(free) for free in CONTENT_FREE for _ in labels]
    answers = runtime.run(prompt, texts, lambda i, n: single(Pick((labels[i % len(labels)],), score_rest=True)),
                          task.answer_tokens)
    mean = [0.0] * len(labels)
    for k in range(len(CONTENT_FREE)):
        scores = [sum(a.value.token_logprobs) for a in answers[k * len(labels):(k + 1) * len(labels)]]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        for i, w in enumerate(weights):
            mean[i] += w / sum(weights) / len(CONTENT_FREE)
    return {label: math.log(max(p, 1e-12)) for label, p in zip(labels, mean)}


def prepared(task, runtime, path: Path, model: str):
    """The task with its program dividing out the content-free prior: measured on first use for
    this task and model, then read from where it was kept."""
    store = store_at(path)
    prior = store.get_data(model, task.key + SUFFIX)
    if prior is None:
        prior = measure(runtime, task)
        store.put_data(model, task.key + SUFFIX, task.name, prior)
    return dataclasses.replace(task, program=task.contextual.program(prior))
