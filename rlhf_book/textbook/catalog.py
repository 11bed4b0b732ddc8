"""The table of contents: which chapters exist, and which exercises each one sets.

Everything else in :mod:`rlhf_book.textbook` reads this catalogue: the stub generator (which
library functions to turn into exercises), the grader (which check grades which exercise),
the guide sync and the notebook runner (which files belong to a chapter).

An exercise is a library function whose body, or part of it, sits between
``# BEGIN SOLUTION`` and ``# END SOLUTION``. Its stub in ``exercises/<chapter>.py`` keeps the
signature and docstring and raises ``NotImplementedError`` in place of the solution; its
grading check lives in ``rlhf_book.textbook.checks.<chapter>`` under the function's name.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from typing import Callable

import rlhf_book

PACKAGE_DIR = pathlib.Path(rlhf_book.__file__).resolve().parent

STAR = "\u2605"  # ★
# What each number of stars means, as the guides' exercise sections explain it.
DIFFICULTIES = {
    1: "a formula in a line or two",
    2: "a mask, an index or numerical care",
    3: "a scan, a loop or a gradient to get right",
}


def project_root() -> pathlib.Path:
    """The repository checkout: the folder above the package, where ``notebooks/``,
    ``chapters/``, ``exercises/`` and ``figures/`` live."""
    return PACKAGE_DIR.parent


@dataclasses.dataclass(frozen=True)
class Exercise:
    """One graded exercise.

    ``id`` is ``"<chapter number>.<k>"`` (e.g. ``"0.1"``, ``"6.3"``); ``target`` names the
    reference implementation as ``"module:function"``; ``section`` is where the book (or a
    lecture) explains it, quoted in every hint; ``timeout`` bounds one grading run in seconds.

    ``difficulty`` is one to three stars, judged from the reference solution: 1 for a formula in
    a line or two, 2 for one that needs a mask or numerical care, 3 for a scan, a loop or a
    gradient to get right. Every exercise of the catalogue has one; ``None`` (unrated) is left
    for exercises built elsewhere, in tests.
    """

    id: str
    title: str
    target: str
    section: str
    timeout: float = 60.0
    difficulty: int | None = None

    def __post_init__(self):
        if self.difficulty is not None and (isinstance(self.difficulty, bool)
                                            or self.difficulty not in DIFFICULTIES):
            raise ValueError(f"difficulty of exercise {self.id} must be one of "
                             f"{sorted(DIFFICULTIES)} (stars) or None, got {self.difficulty!r}")

    @property
    def stars(self) -> str:
        """The difficulty as stars (``"★★"``), or ``""`` for an unrated exercise."""
        return STAR * (self.difficulty or 0)

    @property
    def module(self) -> str:
        return self.target.split(":")[0]

    @property
    def function(self) -> str:
        return self.target.split(":")[1]

    @property
    def chapter(self) -> "Chapter":
        return chapter_of(self.id)

    def reference(self) -> Callable:
        """The library's own implementation."""
        return getattr(importlib.import_module(self.module), self.function)

    def checker(self) -> Callable[[Callable], None]:
        """``check(fn)``: returns quietly when ``fn`` is correct, raises ``AssertionError``
        with the first mismatch otherwise."""
        checks = importlib.import_module(f"rlhf_book.textbook.checks.{self.chapter.key}")
        return getattr(checks, self.function)


@dataclasses.dataclass(frozen=True)
class Chapter:
    """A chapter: its number, its slug (``ch06_policy_gradients``), what it covers, and its
    exercises. The notebook, guide and stub file are named after the slug."""

    number: int
    slug: str
    title: str
    sections: str
    exercises: tuple[Exercise, ...] = ()
    # Extra notebooks of the chapter, by file stem (``"ch00_jax_primer"``), read before its
    # main notebook in this order; each sets the exercises whose function lives in the module
    # named after it (``rlhf_book.jax_primer`` for ``ch00_jax_primer``).
    companions: tuple[str, ...] = ()
    # Notebooks that continue the main one, by file stem, read after it in this order (chapter
    # 7's reasoning-length notebook); each sets the exercises of the module named after it,
    # as a companion does. Where no module has its name, it is a tutorial that sets none and
    # ends without a "Your turn" section (chapter 0's scaling-out notebook).
    sequels: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"ch{self.number:02d}_{self.slug}"

    @property
    def short(self) -> str:
        return f"ch{self.number:02d}"

    def notebook(self, root: pathlib.Path | None = None) -> pathlib.Path:
        return (root or project_root()) / "notebooks" / f"{self.key}.ipynb"

    def notebooks(self, root: pathlib.Path | None = None) -> tuple[pathlib.Path, ...]:
        """Every notebook of the chapter in reading order: the companions, the main one, then
        its sequels."""
        folder = (root or project_root()) / "notebooks"
        return (tuple(folder / f"{stem}.ipynb" for stem in self.companions)
                + (self.notebook(root),)
                + tuple(folder / f"{stem}.ipynb" for stem in self.sequels))

    def exercises_of(self, notebook: str | pathlib.Path) -> tuple[Exercise, ...]:
        """The exercises one of the chapter's notebooks (a path or a stem) sets in its "Your
        turn" section: a companion or sequel ``chNN_<name>`` those whose function lives in a
        module named ``<name>`` (chapter 0's JAX primer sets those of
        ``rlhf_book.jax_primer``, chapter 7's reasoning length those of
        ``rlhf_book.ch07_reasoning.reasoning_length``), the main notebook all the others. A
        companion or sequel without such a module (chapter 0's scaling out) sets none."""
        stem = pathlib.Path(notebook).stem

        def owner(exercise: Exercise) -> str:
            for companion in self.companions + self.sequels:
                if exercise.module.rsplit(".", 1)[-1] == companion.split("_", 1)[1]:
                    return companion
            return self.key
        return tuple(e for e in self.exercises if owner(e) == stem)

    def guide(self, root: pathlib.Path | None = None) -> pathlib.Path:
        return (root or project_root()) / "chapters" / f"{self.key}.md"

    def stub_file(self, exercises_dir: pathlib.Path | None = None) -> pathlib.Path:
        return (exercises_dir or project_root() / "exercises") / f"{self.key}.py"


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(
        0, "mini_gpt", "The mini GPT: the substrate every chapter trains",
        "Appendix A.1 (language modelling, eqs. 141, 142); the lecture notes' numpy mini GPT "
        "and their next-token policy {0.6, 0.3, 0.1}",
        exercises=(
            Exercise("0.1", "the causal mask", "rlhf_book.lm.gpt:causal_mask",
                     "book App. A.1, eq. 141", difficulty=1),
            Exercise("0.2", "scaled dot-product attention", "rlhf_book.lm.gpt:attend",
                     "ch00 guide, 'Attention'", difficulty=2),
            Exercise("0.3", "log-probs from logits (softmax cross-entropy)",
                     "rlhf_book.lm.ops:log_probs_from_logits", "book App. A.1, eq. 142",
                     difficulty=2),
            Exercise("0.4", "temperature and top-k sampling",
                     "rlhf_book.lm.sampling:sample_token", "ch00 guide, 'Sampling'", difficulty=3),
            Exercise("0.5", "the KV cache: write new keys and values, mask what is not yet written",
                     "rlhf_book.lm.gpt:write_kv_cache", "book App. A.1, eq. 141; ch00 guide, 'The KV cache'",
                     difficulty=2),
            Exercise("0.6", "the decode step: a forward pass against the KV cache",
                     "rlhf_book.lm.gpt:forward_cached",
                     "book App. A.1, eq. 141; ch00 guide, 'The KV cache'", difficulty=3),
            Exercise("0.7", "per-example gradients: vmap of grad",
                     "rlhf_book.jax_primer:per_example_grads",
                     "ch00 JAX primer, sections 4 (grad) and 5 (vmap)", difficulty=2),
            Exercise("0.8", "an SGD step on a pytree of parameters",
                     "rlhf_book.jax_primer:sgd_step", "ch00 JAX primer, section 6 (pytrees)",
                     difficulty=1),
            Exercise("0.9", "an exponential moving average: a loop with a carry",
                     "rlhf_book.jax_primer:exponential_moving_average",
                     "ch00 JAX primer, section 7 (lax.scan)", difficulty=3),
        ),
        companions=("ch00_jax_primer",),
        sequels=("ch00_scaling_out",),
    ),
    Chapter(
        3, "training_overview", "Training overview: the RL problem under RLHF",
        "book §3.1 problem formulation (eqs. 1, 2), §3.1.1 thermostat (eq. 3), §3.1.2 CartPole "
        "(eqs. 4, 5, 6, 7, 8, 9), §3.1.4 the KL-regularised objective (eq. 11), §3.3 canonical "
        "recipes; returns per §6.1 eqs. 24, 25 (corrected) and REINFORCE per §6.1.3 eq. 45",
        exercises=(
            Exercise("3.1", "discounted returns-to-go",
                     "rlhf_book.ch03_training_overview.rl:discounted_returns",
                     "book §3.1, eq. 2; §6.1, eqs. 24, 25 (corrected)", difficulty=3),
            Exercise("3.2", "one CartPole step (Euler, Gym CartPole-v1)",
                     "rlhf_book.ch03_training_overview.rl:cartpole_step",
                     "book §3.1.2, eqs. 5, 6, 7, 8, 9", difficulty=2),
            Exercise("3.3", "the REINFORCE loss",
                     "rlhf_book.ch03_training_overview.rl:reinforce_loss", "book §6.1.3, eq. 45",
                     difficulty=2),
        ),
    ),
    Chapter(
        4, "instruction_tuning", "Instruction tuning (SFT)",
        "book ch. 4 (§4.1 chat templates, §4.3 implementation details; App. A.1 eq. 142); "
        "the lecture notes' SFT loss masking",
        exercises=(
            Exercise("4.1", "the book's chat templates (ChatML, Zephyr, Tulu)",
                     "rlhf_book.ch04_instruction_tuning.losses:apply_chat_template", "book §4.1",
                     difficulty=2),
            Exercise("4.2", "the loss mask: all assistant turns or the last",
                     "rlhf_book.ch04_instruction_tuning.losses:loss_mask_for", "book §4.3",
                     difficulty=2),
            Exercise("4.3", "the SFT loss (masked next-token NLL)",
                     "rlhf_book.ch04_instruction_tuning.losses:sft_loss",
                     "book §4.3, App. A.1 eq. 142", difficulty=2),
            Exercise("4.4", "sequence packing",
                     "rlhf_book.ch04_instruction_tuning.losses:pack_examples", "book §4.3",
                     difficulty=3),
            Exercise("4.5", "a packed SFT step: the loss and its gradient through the model",
                     "rlhf_book.ch04_instruction_tuning.loop:sft_step",
                     "book §4.3, App. A.1 eq. 142", difficulty=3),
        ),
    ),
    Chapter(
        5, "reward_models", "Reward models: Bradley-Terry and its family",
        "book ch. 5 (§5.1 eqs. 12, 13, 14, 15, 16, 17; §5.2, §5.3; §5.4 eqs. 18, 19, 20; "
        "§5.5 eq. 21; §5.6 eq. 22; §5.7 types of reward model); the lecture notes' reward-model "
        "material (their lesson's six pairs and its two exercises)",
        exercises=(
            Exercise("5.1", "the Bradley-Terry loss, with Llama 2's margin",
                     "rlhf_book.ch05_reward_models.losses:bradley_terry_loss",
                     "book §5.1, eqs. 16, 17; §5.4.1, eq. 18", difficulty=1),
            Exercise("5.2", "balancing the C(K, 2) comparisons of a prompt",
                     "rlhf_book.ch05_reward_models.losses:balanced_pairwise_loss",
                     "book §5.4.2, eq. 19 (per prompt)", difficulty=3),
            Exercise("5.3", "the Plackett-Luce ranking loss",
                     "rlhf_book.ch05_reward_models.losses:plackett_luce_loss",
                     "book §5.4.3, eq. 20", difficulty=2),
            Exercise("5.4", "the last real token under left or right padding",
                     "rlhf_book.ch05_reward_models.losses:last_token_index", "book §5.3",
                     difficulty=2),
            Exercise("5.5", "mean pooling (the lecture's exercise 1)",
                     "rlhf_book.ch05_reward_models.losses:mean_pool", "ch05 guide, 'Pooling'",
                     difficulty=2),
            Exercise("5.6", "reward margins on seen and unseen pairs (the lecture's exercise 2)",
                     "rlhf_book.ch05_reward_models.loop:reward_margins", "ch05 guide, 'Calibration'",
                     difficulty=1),
            Exercise("5.7", "a reward-model training step: scores, loss and gradient",
                     "rlhf_book.ch05_reward_models.loop:reward_model_step",
                     "book §5.1, eqs. 16, 17; §5.3", difficulty=3, timeout=120.0),
        ),
    ),
    Chapter(
        6, "policy_gradients", "Policy gradients: REINFORCE, RLOO, PPO, GRPO, GSPO, CISPO",
        "book ch. 6 (§6.1.1 to §6.1.4 REINFORCE and RLOO, eqs. 23, 24, 25, 26, 27, 28, 29, 30, "
        "31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49; §6.1.5 PPO, "
        "eqs. 50, 51, 52, 53, 54; §6.1.6 GRPO and Dr. GRPO, eqs. 55, 56, 57, 58, 59, 60; §6.1.7 "
        "GSPO, eqs. 61, 62, 63, 64; §6.1.8 CISPO, eqs. 65, 66; §6.2.2 loss aggregation, eqs. 67, "
        "68, 69; §6.2.4 truncated importance sampling, eqs. 70, 71, 72; §6.2.5, §6.2.6 where the "
        "KL goes, eq. 74; §6.3.2 GAE, eqs. 75, 76, 77; §6.3.3, §6.3.4 clip fraction and DAPO); "
        "the KL estimators of §15 (Schulman 2020)",
        exercises=(
            Exercise("6.1", "the RLOO leave-one-out advantage",
                     "rlhf_book.ch06_policy_gradients.losses:rloo_advantages",
                     "book §6.1.4, eqs. 47, 48, 49", difficulty=1),
            Exercise("6.2", "PPO's clipped surrogate objective",
                     "rlhf_book.ch06_policy_gradients.losses:ppo_objective",
                     "book §6.1.5.1, eq. 52 and Figure 20", difficulty=1),
            Exercise("6.3", "GRPO's group advantage (and Dr. GRPO's)",
                     "rlhf_book.ch06_policy_gradients.losses:grpo_advantages",
                     "book §6.1.6, eqs. 57, 58, 59, 60", difficulty=2),
            Exercise("6.4", "GSPO's sequence-level importance ratio",
                     "rlhf_book.ch06_policy_gradients.losses:gspo_sequence_ratio",
                     "book §6.1.7, eq. 63", difficulty=2),
            Exercise("6.5", "CISPO: clip the weight, not the objective",
                     "rlhf_book.ch06_policy_gradients.losses:cispo_loss",
                     "book §6.1.8, eqs. 65, 66", difficulty=3),
            Exercise("6.6", "the three loss aggregations",
                     "rlhf_book.ch06_policy_gradients.losses:aggregate_loss",
                     "book §6.2.2, eqs. 67, 68, 69", difficulty=2),
            Exercise("6.7", "truncated importance-sampling weights",
                     "rlhf_book.ch06_policy_gradients.losses:tis_weights",
                     "book §6.2.4, eq. 70 and its TIS code", difficulty=2),
            Exercise("6.8", "generalised advantage estimation (GAE)",
                     "rlhf_book.ch06_policy_gradients.losses:compute_gae",
                     "book §6.3.2, eqs. 75, 76, 77 and its GAE code", difficulty=3),
            Exercise("6.9", "the GRPO step: advantages, loss, gradient",
                     "rlhf_book.ch06_policy_gradients.loop:grpo_step",
                     "book §6.1.6, eqs. 55, 56, 57, 58 with eq. 52; §6.2.2, eqs. 67, 68, 69",
                     timeout=120.0, difficulty=3),
        ),
    ),
    Chapter(
        7, "reasoning", "Reasoning: RL with verifiable rewards and inference-time scaling",
        "book ch. 7, which has no numbered equations (the introduction: verifiable rewards, the "
        "primes-below-20 example, the fib unit tests, Figure 25; §7.1 origins, §7.1.2 training "
        "vs inference-time scaling; §7.2.3 common practices: difficulty filtering, online "
        "filtering, format rewards, parallel test-time compute); pass@k (Chen et al. 2021), "
        "self-consistency (Wang et al. 2023), MaxRL (Tajwar et al. 2026), GDPO (Liu et al. 2026)",
        sequels=("ch07_reasoning_length",),
        exercises=(
            Exercise("7.1", "reading the final answer in each format",
                     "rlhf_book.ch07_reasoning.verifiers:extract_final_answer",
                     "book ch. 7 introduction (the primes-below-20 example); §16.1",
                     difficulty=3),
            Exercise("7.2", "unit-test rewards: gating or partial credit",
                     "rlhf_book.ch07_reasoning.verifiers:unit_test_reward",
                     "book ch. 7 introduction (the fib unit tests)", difficulty=1),
            Exercise("7.3", "the unbiased pass@k estimator",
                     "rlhf_book.ch07_reasoning.rlvr:pass_at_k",
                     "book §7.1.2 and §16.1; Chen et al. 2021", difficulty=2),
            Exercise("7.4", "the share of groups with no signal",
                     "rlhf_book.ch07_reasoning.rlvr:zero_signal_probability",
                     "book §7.2.3, online filtering", difficulty=1),
            Exercise("7.5", "the 20-80% difficulty filter",
                     "rlhf_book.ch07_reasoning.rlvr:difficulty_filter",
                     "book §7.2.3, offline difficulty filtering", difficulty=2),
            Exercise("7.6", "majority vote, first occurrence winning ties",
                     "rlhf_book.ch07_reasoning.rlvr:majority_vote",
                     "book §7.2.3, parallel test-time compute; Wang et al. 2023", difficulty=2),
            Exercise("7.7", "MaxRL's advantage (r - mean) / mean",
                     "rlhf_book.ch07_reasoning.rlvr:maxrl_advantages",
                     "Tajwar et al. 2026; beside GRPO's advantage, book §6.1.6", difficulty=2),
            Exercise("7.8", "the RLVR step: verified rewards, advantages, loss, gradient",
                     "rlhf_book.ch07_reasoning.loop:rlvr_step",
                     "book ch. 7 introduction (the RLVR loop, Figure 25) and §7.2.3 (online "
                     "filtering, no KL, clip-higher, loss normalisation); §6.1.5, eq. 52; "
                     "§6.1.6, eqs. 56, 57; §6.2.2, eqs. 67, 68; Tajwar et al. 2026",
                     timeout=120.0, difficulty=3),
            Exercise("7.9", "a process check of a worked answer",
                     "rlhf_book.ch07_reasoning.reasoning_length:audit_worked_answer",
                     "book ch. 7 (an outcome verifier reads only the answer; §7.1.2, "
                     "performance growing with the tokens generated); Nye et al. 2021; "
                     "Lightman et al. 2023", difficulty=2),
        ),
    ),
    Chapter(
        8, "direct_alignment", "Direct alignment: DPO and its family",
        "book ch. 8 (§8.1.1 the DPO loss, eqs. 79, 80, 81; §8.1.2.1 the optimal policy, eqs. 82, "
        "87, 94, 95; §8.1.2.2 the Bradley-Terry objective, eqs. 96, 100, 104, 105; §8.1.2.3 the "
        "gradient, eqs. 106, 107, 108; §8.2 cDPO, robust DPO, IPO, SLiC, SimPO, ORPO, preference displacement, online "
        "DPO; §8.3 the original implementation; §8.5 online vs offline); KTO (not in the book)",
        exercises=(
            Exercise("8.1", "the DPO loss (and cDPO's label smoothing)",
                     "rlhf_book.ch08_direct_alignment.losses:dpo_loss",
                     "book §8.1.1, eq. 79; §8.2 (cDPO)", difficulty=1),
            Exercise("8.2", "DPO's gradient weight",
                     "rlhf_book.ch08_direct_alignment.losses:dpo_gradient_weight",
                     "book §8.1.1, eq. 81; §8.1.2.3, eqs. 106, 107, 108", difficulty=1),
            Exercise("8.3", "the KL-regularised optimum pi* (eq. 95)",
                     "rlhf_book.ch08_direct_alignment.losses:optimal_policy",
                     "book §8.1.2.1, eqs. 82, 87, 94, 95", difficulty=2),
            Exercise("8.4", "the population DPO loss on exact preferences",
                     "rlhf_book.ch08_direct_alignment.losses:population_dpo_loss",
                     "book §8.1.2.2, eqs. 96, 100, 104, 105", difficulty=3),
            Exercise("8.5", "IPO's squared loss",
                     "rlhf_book.ch08_direct_alignment.losses:ipo_loss",
                     "book §8.2; Azar et al. 2023 (IPO is Psi = identity; ch08 guide, errata)",
                     difficulty=1),
            Exercise("8.6", "SimPO: length-normalised, with a margin",
                     "rlhf_book.ch08_direct_alignment.losses:simpo_loss",
                     "book §8.2; Meng et al. 2024", difficulty=1),
            Exercise("8.7", "ORPO's odds-ratio term",
                     "rlhf_book.ch08_direct_alignment.losses:orpo_odds_ratio_loss",
                     "book §8.2; Hong et al. 2024", difficulty=2),
            Exercise("8.8", "the DPO step: log-probs, loss, gradient",
                     "rlhf_book.ch08_direct_alignment.loop:dpo_step",
                     "book §8.1.1, eqs. 79, 81; §8.3", timeout=120.0, difficulty=3),
        ),
    ),
    Chapter(
        9, "rejection_sampling", "Rejection sampling and best-of-N",
        "book ch. 9 (§9.1 the training process: eqs. 109, 110, 111, 112, 113, 114, 115, 116, the "
        "worked example eqs. 117, 118, 119, 120, 121, 122, 123, the code snippet, Figure 28; "
        "§9.2 implementation details; §9.3 best-of-N, eqs. 124, 125, with the KL of best-of-N "
        "from Stiennon et al. 2020 and Beirami et al. 2024)",
        exercises=(
            Exercise("9.1", "the top K (prompt, completion) pairs of the reward matrix",
                     "rlhf_book.ch09_rejection_sampling.selection:select_top_overall",
                     "book §9.1, eqs. 115, 116 and the worked example, eqs. 121, 122, 123",
                     difficulty=2),
            Exercise("9.2", "undoing a sort: the inverse permutation of the book's snippet",
                     "rlhf_book.ch09_rejection_sampling.selection:inverse_permutation",
                     "book §9.1, the code snippet", difficulty=2),
            Exercise("9.3", "the KL of best-of-N from the base policy",
                     "rlhf_book.ch09_rejection_sampling.selection:best_of_n_kl",
                     "book §9.3; Stiennon et al. 2020, Beirami et al. 2024", difficulty=1),
            Exercise("9.4", "rejection sampling into an SFT batch",
                     "rlhf_book.ch09_rejection_sampling.loop:rejection_sampling_batch",
                     "book §9.1, eqs. 113, 114, 115, 116, the worked example (eqs. 117-123) "
                     "and Figure 28", difficulty=3),
        ),
    ),
    Chapter(
        14, "overoptimization", "Over-optimisation: the proxy rises, the truth peaks and falls",
        "book ch. 14, which has no numbered equations (the introduction and Figure 38: a proxy "
        "that rises while the downstream score peaks and falls; §14.1 qualitative "
        "over-optimisation, Goodhart's law, stock phrases and confident wrong answers; §14.2 "
        "quantitative: reward against the square root of the KL; §14.3 misalignment); Gao, "
        "Schulman and Hilton 2023 (the best-of-N and RL forms and their fit); Manheim and "
        "Garrabrant 2018 (regressional and extremal Goodhart); Bai et al. 2022 (Figure 39's train "
        "and test reward models); Coste et al. 2024 (reward-model ensembles); book eqs. 82 and 95 "
        "and §9.3 for the policies optimised",
        exercises=(
            Exercise("14.1", "Gao et al.'s best-of-N form d (alpha - beta d)",
                     "rlhf_book.ch14_overoptimization.gao:gao_bon",
                     "book §14.2; Gao et al. 2023", difficulty=1),
            Exercise("14.2", "Gao et al.'s RL form, and its value and gradient at d = 0",
                     "rlhf_book.ch14_overoptimization.gao:gao_rl",
                     "book §14.2; Gao et al. 2023", difficulty=2),
            Exercise("14.3", "where each form peaks",
                     "rlhf_book.ch14_overoptimization.gao:gao_peak",
                     "book §14.2; Gao et al. 2023", difficulty=1),
            Exercise("14.4", "fitting the forms by least squares",
                     "rlhf_book.ch14_overoptimization.gao:fit_gao",
                     "book §14.2; Gao et al. 2023", difficulty=2),
            Exercise("14.5", "best-of-N's gold reward from samples, for every N at once",
                     "rlhf_book.ch14_overoptimization.bon:best_of_n_from_samples",
                     "book §14.2 and §9.3; Gao et al. 2023", difficulty=2),
            Exercise("14.6", "one exact policy-gradient step with a KL penalty, plain and natural",
                     "rlhf_book.ch14_overoptimization.proxies:pg_step",
                     "book eq. 82 and §15.1; Gao et al. 2023; Kakade 2001", difficulty=3),
            Exercise("14.7", "the KL-regularised optimum on a pool, measured: Figure 38's curves",
                     "rlhf_book.ch14_overoptimization.pool:tilt_curve",
                     "book eq. 95, §14.1 and §14.2; Gao et al. 2023; Manheim and Garrabrant "
                     "2018", difficulty=2),
        ),
    ),
    Chapter(
        15, "regularization", "Regularisation: the KL penalty and what else keeps a policy close",
        "book ch. 15 (§15.1 the KL to a reference, eqs. 126, 127, 128, 129, and the "
        "implementation example of §15.1.2; §15.2 implicit regularisation: SFT memorises / RL "
        "generalises, retaining by doing, RL's razor, eqs. 130, 131, 132, 133, 134, 135; §15.3 "
        "pretraining gradients (PPO-ptx, DPO + NLL, eqs. 136, 137, 138, 139) and margin-based "
        "regularisation, eq. 140); Schulman's KL estimators (2020)",
        exercises=(
            Exercise("15.1", "Schulman's k3 estimator, stable for nearby models",
                     "rlhf_book.lm.kl:kl_k3",
                     "book §15.1, eq. 129; Schulman 2020; ch15 guide, 'Estimating the KL'",
                     difficulty=2),
            Exercise("15.2", "the exact KL over the vocabulary",
                     "rlhf_book.ch15_regularization.losses:exact_kl", "book §15.1, eq. 128",
                     difficulty=2),
            Exercise("15.3", "the sequence KL of a generation, masked",
                     "rlhf_book.ch15_regularization.losses:sequence_kl",
                     "book §15.1.2, the implementation example (its kl_full, fixed)", difficulty=1),
        ),
    ),
    Chapter(
        16, "evaluation", "Evaluation: formats, variance, contamination and leaderboards",
        "book ch. 16, which has no numbered equations (§16.1 prompt formatting: few-shot, "
        "multiple choice scored by log-likelihood or by generation and exact match, chain of "
        "thought, Tulu 3's MMLU prompt; §16.2 why external comparisons are unreliable; §16.3 how "
        "labs use evaluations: Elo, statistical power; §16.4 contamination: 8-gram and "
        "50-character overlap); Appendix C.2 (evaluation variance, Table 7) and C.3 (training "
        "variance: seeds and sweeps); Elo 1978 and Bradley-Terry (book eq. 13) leaderboards",
        exercises=(
            Exercise("16.1", "strict answer extraction: Tulu 3's suffix, a box, 'The answer is:'",
                     "rlhf_book.ch16_evaluation.formats:extract_strict_answer",
                     "book §16.1 (exact match) and §16.2 (answer-format conflicts)",
                     difficulty=1),
            Exercise("16.2", "log-likelihood scores of the choices, with length normalisation",
                     "rlhf_book.ch16_evaluation.formats:choice_log_likelihood",
                     "book §16.1 (log-likelihood scoring)", difficulty=2),
            Exercise("16.3", "the standard deviation of a re-run",
                     "rlhf_book.ch16_evaluation.variance:rerun_std",
                     "book §16.2 and App. C.2, Table 7", difficulty=1),
            Exercise("16.4", "the confidence interval of a difference between two models",
                     "rlhf_book.ch16_evaluation.variance:diff_ci",
                     "book §16.2 and App. C.2, Table 7", difficulty=1),
            Exercise("16.5", "8-gram contamination between training data and an evaluation",
                     "rlhf_book.ch16_evaluation.contamination:ngram_contamination",
                     "book §16.4", difficulty=2),
            Exercise("16.6", "one Elo update", "rlhf_book.ch16_evaluation.leaderboard:elo_update",
                     "book §16.3; Elo 1978", difficulty=1),
            Exercise("16.7", "Elo ratings from a sequence of battles, in a scan",
                     "rlhf_book.ch16_evaluation.leaderboard:elo_ratings",
                     "book §16.3; Elo 1978", difficulty=3),
            Exercise("16.8", "maj@k: the majority of k samples, block by block",
                     "rlhf_book.ch16_evaluation.variance:maj_at_k",
                     "book §16.1 (majority voting) and App. C.2, Table 7", difficulty=2),
        ),
    ),
)


def get_chapter(name: str | int) -> Chapter:
    """Look a chapter up by number (``6``), short name (``ch06``) or full key."""
    for chapter in CHAPTERS:
        if name in (chapter.number, chapter.short, chapter.key, str(chapter.number)):
            return chapter
    known = ", ".join(c.short for c in CHAPTERS)
    raise ValueError(f"chapter must be one of {known}, got {name!r}")


def all_exercises() -> dict[str, Exercise]:
    """Every exercise of every chapter, by id, in book order."""
    return {e.id: e for chapter in CHAPTERS for e in chapter.exercises}


def get_exercise(exercise_id: str) -> Exercise:
    exercises = all_exercises()
    if exercise_id not in exercises:
        raise ValueError(f"exercise id must be one of {sorted(exercises)}, got {exercise_id!r}")
    return exercises[exercise_id]


def chapter_of(exercise_id: str) -> Chapter:
    for chapter in CHAPTERS:
        if any(e.id == exercise_id for e in chapter.exercises):
            return chapter
    raise ValueError(f"no chapter sets an exercise with id {exercise_id!r}")
