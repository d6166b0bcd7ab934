"""Every model's token view of one task: tokenized once per tokenizer, with an example dropped
for all models as soon as one model drops it (so weak and strong runs see the same rows)."""

from __future__ import annotations

import numpy as np

from w2s.data.tasks import TaskData
from w2s.data.tokenize import load_tokenizer, tokenize
from w2s.train.loop import View


def token_views(
    task: TaskData, models: dict[str, str], max_length: int, overlong: str
) -> tuple[TaskData, dict[str, View]]:
    """``models`` maps a model name to its checkpoint directory; returns the kept task and a
    :class:`View` per model name, both over the same kept rows."""
    views, keep = {}, np.ones(len(task.texts), bool)
    for name, path in models.items():
        tok = load_tokenizer(path)
        t = tokenize(task.texts, tok, max_length, overlong)
        views[name] = View(t.ids, int(tok.pad_token_id))
        keep &= t.keep
    if not keep.all():
        task = task.subset(keep, reason=f"longer than {max_length} tokens")
        index = np.flatnonzero(keep)
        views = {k: v.take(index) for k, v in views.items()}
    return task, views
