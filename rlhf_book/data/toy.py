"""The lectures' own toy data, reproduced exactly, for the worked examples that need it.

From the "Build" lesson on reward models and PPO (a NumPy lesson in the lecture notes, a
Korean translation of the ai-engineering-from-scratch course's RLHF lesson; the response texts
are English in the source and are kept byte for byte):

* :data:`LESSON_PREFERENCE_PAIRS` -- its six synthetic preference pairs (``PREFERENCE_DATA``).
  In each, the preferred answer is concise and direct and the rejected one pads, hedges,
  repeats itself or is imprecise. Note the length confound: "the shorter one wins" is right
  on 4 of 6 pairs (pairs 2 and 6 prefer the longer answer), and 6 of the 12 sequences exceed
  the lesson's 128-token context once tokenised as prompt + separator + response.
* :data:`LESSON_UNSEEN_PAIRS` -- four more pairs in the same spirit, **ours, not the lesson's**:
  its exercise 2 asks the reader to add four unseen pairs and check whether the reward margin
  learned on the six holds. Two prefer the shorter answer and two the longer one, so a reward
  model that only learned "shorter is better" is caught.
* :data:`LESSON_QUANTUM_PAIR` -- the lesson's opening example: asked "Explain quantum
  computing", response A (concise, informative, structured) is the one a person would pick
  every time over response B (a rambling history), although both are factually fine.
* :data:`LESSON_EVAL_PROMPTS` -- the three prompts its demo uses to compare the SFT and RLHF
  models ("Explain gravity." differs from the training prompt "Explain gravity in one sentence.").
* :data:`LESSON_TOKEN_POLICY` -- from the CME 295 Lecture 5 notes (§4, RL/RLHF basics): a
  language model as a policy over next tokens. After the state "things you can do with a
  teddy bear", the next-token distribution is {"activity": 0.6, "play": 0.3, "game": 0.1}
  (English glosses of the Korean tokens); chapter 0 samples from it at several temperatures.
"""

from __future__ import annotations

LESSON_PREFERENCE_PAIRS: tuple[dict[str, str], ...] = (
    {
        "prompt": "What is the capital of France?",
        "preferred": "The capital of France is Paris.",
        "rejected": "France is a country in Europe. It has many cities. The capital is Paris. "
                    "Paris is known for the Eiffel Tower.",
    },
    {
        "prompt": "Explain gravity in one sentence.",
        "preferred": "Gravity is the force that attracts objects with mass toward each other.",
        "rejected": "Gravity is something that makes things fall down when you drop them.",
    },
    {
        "prompt": "What is 15 times 7?",
        "preferred": "15 times 7 is 105.",
        "rejected": "Let me think about this. 15 times 7. Well, 10 times 7 is 70, and 5 times 7 is "
                    "35, so the answer might be around 105.",
    },
    {
        "prompt": "Name three programming languages.",
        "preferred": "Python, Rust, and TypeScript.",
        "rejected": "There are many programming languages. Some popular ones include various "
                    "languages like Python and others.",
    },
    {
        "prompt": "What year did World War II end?",
        "preferred": "World War II ended in 1945.",
        "rejected": "World War II was a major global conflict. It involved many countries. The war "
                    "ended in the mid-1940s, specifically in 1945.",
    },
    {
        "prompt": "Define machine learning.",
        "preferred": "Machine learning is a field where algorithms learn patterns from data to make "
                     "predictions without being explicitly programmed.",
        "rejected": "Machine learning is a type of AI. AI stands for artificial intelligence. "
                    "Machine learning uses data to learn.",
    },
)

LESSON_UNSEEN_PAIRS: tuple[dict[str, str], ...] = (
    {
        "prompt": "What is the largest planet?",
        "preferred": "Jupiter is the largest planet.",
        "rejected": "There are many planets in the solar system. Some are big and some are small. "
                    "The largest one is probably Jupiter.",
    },
    {
        "prompt": "What is 12 plus 30?",
        "preferred": "12 plus 30 is 42.",
        "rejected": "Let me see. 12 plus 30. Adding the tens gives 40 and then the ones give 2, "
                    "so I think it is 42.",
    },
    {
        "prompt": "Why is the sky blue?",
        "preferred": "Air scatters blue sunlight much more than red light, so blue light reaches "
                     "our eyes from all over the sky.",
        "rejected": "Because it is blue.",
    },
    {
        "prompt": "Explain photosynthesis.",
        "preferred": "Plants use the energy of sunlight to turn water and carbon dioxide into "
                     "sugar, releasing oxygen as a by-product.",
        "rejected": "It is a plant thing.",
    },
)

LESSON_QUANTUM_PAIR: dict[str, str] = {
    "prompt": "Explain quantum computing",
    "preferred": "Quantum computing uses qubits that can exist in superposition, meaning they can "
                 "be 0, 1, or both simultaneously. This allows quantum computers to process "
                 "certain calculations exponentially faster than classical computers. Key "
                 "algorithms include Shor's algorithm for factoring large numbers and Grover's "
                 "algorithm for searching unsorted databases.",
    "rejected": "Quantum computing is a type of computing that uses quantum mechanical phenomena. "
                "It was first proposed in the 1980s. Richard Feynman suggested that quantum "
                "systems could be simulated by quantum computers. The field has grown "
                "significantly since then. Many companies are now working on quantum computers. "
                "IBM, Google, and others have made progress. Quantum supremacy was claimed by "
                "Google in 2019.",
}

LESSON_EVAL_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Explain gravity.",
    "Name three programming languages.",
)

LESSON_TOKEN_POLICY: dict[str, float] = {"activity": 0.6, "play": 0.3, "game": 0.1}
