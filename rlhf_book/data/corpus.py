"""A pretraining corpus sampled from the world: short plain-text documents, ASCII, <= 200 bytes.

Four kinds of documents, drawn with probabilities :data:`DOC_KINDS`:

* ``facts``  -- fact statements, topic-balanced ("The capital of Peru is Lima. A cow says moo.").
* ``qa``     -- question/answer snippets ("Q: What color is snow?\\nA: Snow is white.") whose
  answers come in *mixed styles* (:data:`QA_STYLE_WEIGHTS`), as web text does: mostly concise,
  sometimes verbose, hedging, wrong or off topic. The base model thus learns every style, and
  SFT (book ch. 4) and preference tuning have something to select among.
* ``table``  -- a row of the addition table, shuffled ("7 + 3 = 10, 7 + 1 = 8, ...").
* ``prose``  -- general sentences about nothing in particular.

Held-out questions (see :func:`rlhf_book.data.world.question_splits`): **fact statements and
tables cover every fact, held-out ones included; Q/A snippets ask only the training questions
(training facts, trained phrasings).** So the base model *knows* every fact; a rephrased
question is new to it as wording, an unseen fact as a question. Evaluating on the rephrased
questions measures whether instruction tuning generalises across phrasings; on unseen facts,
whether it elicits knowledge the pretrained model holds only as statements (book ch. 4: SFT
teaches format and style, pretraining supplies the knowledge).
"""

from __future__ import annotations

import numpy as np

from rlhf_book.data.styles import OFF_TOPIC_SENTENCES, STYLES, render_answer
from rlhf_book.data.world import (ADD_OPERANDS, Fact, Question, all_facts,
                                  fact_statements, group_by_topic, split_questions)

MAX_DOCUMENT_BYTES = 200
DOC_KINDS = {"facts": 0.35, "qa": 0.35, "table": 0.15, "prose": 0.15}
QA_STYLE_WEIGHTS = {"concise_correct": 0.45, "verbose": 0.15, "hedging": 0.15, "wrong": 0.10,
                    "off_topic": 0.15}
_STYLE_CDF = np.cumsum([QA_STYLE_WEIGHTS[s] for s in STYLES])
_QA_FORMATS = ("Q: {q}\nA: {a}", "Question: {q}\nAnswer: {a}", "{q} {a}")
_PROSE = OFF_TOPIC_SENTENCES + (
    "Every country has a capital city.", "Animals make many different sounds.",
    "Numbers can be added and multiplied.", "Many things in the world have a color.",
    "A question deserves a clear answer.", "A short answer is often the best answer.",
    "People ask questions to learn new things.", "Some answers are right and some are wrong.",
)


def _fill(pieces, rng: np.random.Generator, sep: str) -> str:
    """Join pieces drawn from the callable ``pieces`` until a random target length is reached,
    never exceeding :data:`MAX_DOCUMENT_BYTES` (the first piece always fits)."""
    target = int(rng.integers(60, MAX_DOCUMENT_BYTES + 1))
    doc = pieces()
    while len(doc) < target:
        nxt = doc + sep + pieces()
        if len(nxt) > MAX_DOCUMENT_BYTES:
            break
        doc = nxt
    return doc


def _pick_balanced(groups: list[list], rng: np.random.Generator):
    """A topic uniformly, then an item uniformly within it (as in ``sample_questions``)."""
    group = groups[rng.integers(len(groups))]
    return group[rng.integers(len(group))]


def _fact_sentence(fact_groups: list[list[Fact]], rng: np.random.Generator) -> str:
    f = _pick_balanced(fact_groups, rng)
    options = fact_statements(f.topic, f.subject, f.answer)
    return options[rng.integers(len(options))]


def _qa_snippet(question_groups: list[list[Question]], rng: np.random.Generator) -> str:
    q = _pick_balanced(question_groups, rng)
    # Inverse-CDF draw: the same distribution as rng.choice(p=...), several times faster.
    style = STYLES[min(int(np.searchsorted(_STYLE_CDF, rng.random(), side="right")), len(STYLES) - 1)]
    fmt = _QA_FORMATS[rng.integers(len(_QA_FORMATS))]
    return fmt.format(q=q.prompt, a=render_answer(q, style, rng))


def _table(rng: np.random.Generator) -> str:
    """One row of the addition table, ``a + 1 .. a + 9``, in a random order (a fixed order
    would let the model count up instead of adding)."""
    operands = list(ADD_OPERANDS)
    a = operands[rng.integers(len(operands))]
    return ", ".join(f"{a} + {b} = {a + b}" for b in rng.permutation(operands).tolist()) + "."


def pretraining_corpus(seed: int = 0, n_documents: int = 6000) -> list[str]:
    """``n_documents`` short ASCII documents (each <= 200 bytes) sampled from the world.

    Args:
        seed: seed of ``numpy.random.default_rng``; same seed, same corpus.
        n_documents: number of documents (>= 1). The default 6000 is about 0.8 MB of text,
            enough to pretrain the 0.8M-parameter byte-level GPT in a few minutes.

    Returns:
        a list of strings; document kinds and the held-out rule are described in the module
        docstring. Book ch. 3-4 (the pretrained base model that post-training starts from).
    """
    if not isinstance(n_documents, (int, np.integer)) or n_documents < 1:
        raise ValueError(f"n_documents must be an integer >= 1, got {n_documents!r}")
    rng = np.random.default_rng(seed)
    fact_groups = group_by_topic(all_facts())
    question_groups = group_by_topic(split_questions()[0])  # training questions only
    kinds = list(DOC_KINDS)
    kind_idx = rng.choice(len(kinds), size=n_documents, p=list(DOC_KINDS.values()))
    docs = []
    for k in kind_idx.tolist():
        kind = kinds[k]
        if kind == "facts":
            docs.append(_fill(lambda: _fact_sentence(fact_groups, rng), rng, " "))
        elif kind == "qa":
            docs.append(_fill(lambda: _qa_snippet(question_groups, rng), rng, "\n\n"))
        elif kind == "table":
            docs.append(_table(rng))
        else:
            docs.append(_fill(lambda: _PROSE[rng.integers(len(_PROSE))], rng, " "))
    return docs
