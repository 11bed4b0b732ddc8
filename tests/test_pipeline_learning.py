"""Learning tests on the main job: ``run_pipeline`` at its default settings, measured.

One module-scoped run of the whole pipeline (mini GPT: pretraining, SFT, reward model, RL, RL
pushed further, online DPO, best-of-8, the evaluations; about 5 minutes on 2 cores) serves
every test here. One xdist worker runs the module (``GROUPS`` in tests/conftest.py), so under
``pytest -n`` the run happens once. Each threshold sits several standard errors below the
measured effect, and the measurement is written beside it; the standard errors are over
questions (the unit sampled).
"""

import numpy as np
import pytest

from rlhf_book import pipeline

# The first test pays for the module's pipeline run: about 5 minutes alone on a fast 2-core
# machine, over 15 on a slower one while the notebooks run on the other worker; the suite's
# 900 s per test is too short for that, so this module allows 45 minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


_RUNS: dict = {}  # the run, kept for this worker process (see the fixture)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # pytest tears a module fixture down whenever another module's test runs on the worker
    # between two of this module's, and sets it up again: keeping the result in the process
    # means the pipeline runs once per worker, not once per interruption (measured: twice,
    # 24 minutes each, in one full run before this).
    if "run" not in _RUNS:
        config = pipeline.PipelineConfig(out_dir=str(tmp_path_factory.mktemp("runs")))
        _RUNS["run"] = config, pipeline.run_pipeline(config, progress=False, log=lambda _: None)
    return _RUNS["run"]


def paired_gain(run, split: str, model: str, reference: str) -> tuple[float, float]:
    """Mean over questions of ``model``'s gold reward minus ``reference``'s, and its SE (on the
    questions ``model`` answered: best-of-N answers a subset)."""
    answers = run[1]["answers"][split]
    index = answers[model].get("question_index", slice(None))
    diff = answers[model]["gold"].mean(1) - answers[reference]["gold"].mean(1)[index]
    return diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))


def test_the_evaluation_is_the_rephrased_questions(run):
    config, out = run
    a = out["answers"]["rephrased"]["sft"]
    assert a["gold"].shape == (520, config.eval_samples)  # 65 trained facts x 8 phrasings


def test_sft_raises_the_gold_reward_of_the_pretrained_model(run):
    gain, se = paired_gain(run, "rephrased", "sft", "pretrained")
    # observed: -0.907 -> -0.429, a gain of +0.478 (SE 0.041): the SFT model answers in the
    # chat format and stops; the base model continues the document. We require 0.3 and 6 SE.
    assert gain > 0.3 and gain > 6 * se, (gain, se)


def test_rl_against_the_reward_model_raises_the_gold_reward(run):
    gain, se = paired_gain(run, "rephrased", "rl", "sft")
    # observed: +0.390 (SE 0.046), right answers 27% -> 44%. We require 0.25 and 4 SE.
    assert gain > 0.25 and gain > 4 * se, (gain, se)


def test_online_dpo_raises_the_gold_reward(run):
    gain, se = paired_gain(run, "rephrased", "dpo", "sft")
    # observed: +0.289 (SE 0.042). We require 0.15 and 4 SE.
    assert gain > 0.15 and gain > 4 * se, (gain, se)


def test_pushing_rl_further_raises_the_proxy_and_lowers_the_gold_reward(run):
    """Book ch. 14: the pushed run (no KL penalty, a larger step, from the default run's policy)
    scores higher under the reward model it optimises and lower under the gold reward."""
    answers = run[1]["answers"]["rephrased"]
    rm = {m: answers[m]["rm"].mean(1) for m in ("rl", "rl (pushed)")}
    rm_gain = rm["rl (pushed)"] - rm["rl"]
    assert rm_gain.mean() > 3 * rm_gain.std(ddof=1) / np.sqrt(len(rm_gain)), rm_gain.mean()
    loss, se = paired_gain(run, "rephrased", "rl", "rl (pushed)")
    # observed: RM +1.16 -> +1.52, gold -0.039 -> -0.458, a fall of 0.42 (SE about 0.04):
    # the pushed policy states confident wrong answers ("It is definitely 7.") or none, which
    # the reward model overrates. We require 0.2 and 3 SE.
    assert loss > 0.2 and loss > 3 * se, (loss, se)
    curve = run[1]["rl_pushed"].metrics["curve"]
    assert curve["kl"][-1] > curve["kl"][0]  # the pushed run moves further from SFT


def test_reward_model_learns_style_and_correctness(run):
    m = run[1]["reward_model"].metrics
    style, right = m["by_kind"]["style"], m["by_kind"]["correctness"]
    # observed: 75.2% on 246 style pairs (ceiling 91.3%), 72.3% on 754 right-vs-wrong pairs
    # (ceiling 99.9%), 73.0% on all (ceiling 97.8%). Chance is 50%; we require 6 SE above it.
    assert 0.85 < style["ceiling"] < 0.95 and 0.95 < m["ceiling"] < 0.99
    for kind in (style, right):
        assert kind["accuracy"] > 0.5 + 6 * np.sqrt(0.25 / kind["pairs"]), kind
    assert m["heldout_mean_chosen"] > m["heldout_mean_rejected"]


def test_best_of_n_picks_what_the_reward_model_likes(run):
    config, out = run
    b = out["answers"]["rephrased"][f"best-of-{config.best_of_n}"]
    gain = b["rm"][:, 0] - b["single_rm"]
    # observed: reward-model score +0.02 for one sample, +1.99 for the pick of 8
    assert gain.mean() > 0.5, gain.mean()
    # and the gold reward of the pick: +0.24 (SE 0.09) over one SFT sample, on 160 questions
    gold, se = paired_gain(run, "rephrased", f"best-of-{config.best_of_n}", "sft")
    assert gold > 0, (gold, se)
    assert abs(b["kl_bound"] - (np.log(8) - 7 / 8)) < 1e-6


def test_sft_can_partly_add(run):
    """Chapter 7's starting point: pass@1 well below 1, pass@16 well above it."""
    a = run[1]["answers"]["arithmetic"]["sft"]
    n = a["right"].shape[1]
    pass_1 = a["right"].mean()
    pass_n = (a["right"].sum(1) > 0).mean()
    # observed (96 sums x 16 samples): pass@1 0.149, pass@16 0.896
    assert n == 16 and 0.05 < pass_1 < 0.6 and pass_n > 0.6, (pass_1, pass_n)


def test_rlvr_raises_held_out_pass_at_1(run):
    """Chapter 7: GRPO with the 0/1 last-integer verifier on the training sums raises pass@1 on
    the same sums asked in phrasings no training data contains, paired by question."""
    arithmetic = run[1]["answers"]["arithmetic"]
    diff = arithmetic["rlvr"]["right"].mean(1) - arithmetic["sft"]["right"].mean(1)
    gain, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
    # observed: pass@1 0.149 -> 0.464, +0.315 (SE 0.030) on 96 sums x 16 answers; pass@16
    # 0.896 -> 0.927. We require 0.15 and 5 SE.
    assert gain > 0.15 and gain > 5 * se, (gain, se)


def test_rlvr_on_sums_costs_answers_about_facts(run):
    """Narrow RL moves the whole policy: after RLVR on sums the model answers the rephrased fact
    questions with "none" more often and states fewer right answers there, with a large KL to
    SFT."""
    answers = run[1]["answers"]["rephrased"]
    more_none = answers["rlvr"]["none"].mean(1) - answers["sft"]["none"].mean(1)
    gain, se = more_none.mean(), more_none.std(ddof=1) / np.sqrt(len(more_none))
    # observed on one CPU: right 27% -> 13%, no answer 44% -> 68%, KL to SFT 13 nats on the 520
    # questions; on another (the models retrained there): right 27.5% -> 22.1% (-5.4 +- 2.5
    # points), no answer 37% -> 48% (+10.4 +- 3.0), KL 10.7 nats. Abstaining scores above a
    # wrong answer, so the gold reward does not fall. We require 3 SE on the rise of "none", a
    # KL above 5 nats, and fewer right answers.
    assert gain > 3 * se, (gain, se)
    assert float(np.mean(answers["rlvr"]["kl"])) > 5.0
    assert answers["rlvr"]["right"].mean() < answers["sft"]["right"].mean()
