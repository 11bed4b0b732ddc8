"""Chapter 14 figures: the book's Figure 38 (a proxy that keeps rising while the true reward
peaks and falls) as data, on a closed-form pool of responses optimised exactly by the
KL-regularised tilt and by best-of-N, with Gao et al.'s (2023) forms fitted; regressional
against extremal Goodhart, averaged over pools; and best-of-N on the mini GPT, ranked by
chapter 5's reward model and scored by the world's gold reward.

This module only draws; the numbers come from
:mod:`rlhf_book.ch14_overoptimization.experiments`. ``notebooks/ch14_overoptimization.ipynb``
passes its own results; with no arguments (``rlhf-book figures ch14``) the figures recompute
them (the mini GPT's from ``substrate.sft_small()`` and ``substrate.reward_model_small()``),
each once per process.
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch14_overoptimization as ch14
from rlhf_book.ch14_overoptimization import experiments as ex
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

COLOURS = {"proxy": "tab:orange", "gold": "tab:blue", "fit": "0.3", "length": "tab:purple"}


@functools.lru_cache(maxsize=1)
def scored_samples() -> dict:
    """:func:`experiments.scored_samples` of the shared SFT model and reward model."""
    return ex.scored_samples(substrate.sft_small(), substrate.reward_model_small())


FIT_STYLES = {"bon": (":", "0.2"), "rl": ("--", "0.55")}


def _fitted(ax, d, gain, form: str, offset: float) -> dict:
    """Fit ``form`` to ``gain`` (gold over the start) against ``d``, draw it shifted back by
    ``offset``; returns the fit's numbers and its root-mean-square error."""
    alpha, beta = ch14.fit_gao(d, gain, form)
    d_star, r_star = ch14.gao_peak(alpha, beta, form)
    form_fn = ch14.gao_bon if form == "bon" else ch14.gao_rl
    rmse = float(np.sqrt(np.mean((np.asarray(form_fn(d, alpha, beta)) - gain) ** 2)))
    grid = np.linspace(0, max(d) * 1.02, 200)
    ls, colour = FIT_STYLES[form]
    ax.plot(grid, np.asarray(form_fn(grid, alpha, beta)) + offset, ls, color=colour, lw=1.2,
            label=f"Gao {form} form fitted: peak d* = {d_star:.2f}")
    return {"alpha": alpha, "beta": beta, "d_star": d_star, "r_star": r_star, "rmse": rmse}


@figure("ch14_figure38", "ch14",
        "The book's Figure 38 as data: a pool of 20,000 responses whose proxy reward "
        "q + 0.25 (L - 4) rewards length L that the gold reward q - 0.05 (L - 4)^2 punishes, "
        "optimised exactly. Left: the KL-regularised optimum pi ∝ exp(proxy / beta) (book "
        "eq. 95) for beta from 10 to 0.1; middle: best-of-N ranked by the proxy, N = 1..1024; "
        "both against d = sqrt(KL to the uniform start), with Gao et al.'s (2023) forms fitted "
        "to the gold reward gained over the start: the best-of-N form d (alpha - beta d) "
        "(dotted) on both, the RL form d (alpha - beta log d) (dashed) on the optimum. Right: "
        "the mean length of the optimised responses.")
def figure38(curves=None) -> FigureResult:
    curves = ex.pool_curves() if curves is None else curves
    fig = Figure(figsize=(14, 3.9))
    axes = fig.subplots(1, 3)
    numbers = {}
    start = float(curves["bon"]["gold"][0])  # N = 1: the uniform start's gold reward
    for ax, (name, title) in zip(axes[:2], (("tilt", "KL-regularised optimum"),
                                            ("bon", "best-of-N"))):
        c = curves[name]
        d = np.asarray(c["sqrt_kl_formula"] if name == "bon" else c["sqrt_kl"])
        for key in ("proxy", "gold"):
            ax.plot(d, c[key], "o-", ms=3, color=COLOURS[key], label=f"{key} reward")
        numbers[name] = {k: np.asarray(v).tolist() for k, v in c.items()}
        numbers[name]["fit"] = {f: _fitted(ax, d, np.asarray(c["gold"]) - start, f, start)
                                for f in (("bon", "rl") if name == "tilt" else ("bon",))}
        numbers[name]["peak_d"] = float(d[int(np.argmax(c["gold"]))])
        finish_axes(ax, xlabel="d = sqrt(KL)", ylabel="mean reward", title=title)
        ax.legend(fontsize=7.5, loc="upper left")
        axes[2].plot(d, c["length"], "o-", ms=3, label=title)
    finish_axes(axes[2], xlabel="d = sqrt(KL)", ylabel="mean length L",
                title="what the proxy bought: length")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch14_goodhart", "ch14",
        "Which mismatch makes the gold reward fall (Goodhart's law; Manheim and Garrabrant "
        "2018). The KL-regularised optimum of a proxy on 60 pools of 20,000 responses each: "
        "a proxy that is gold plus independent noise (regressional) and the length-rewarding "
        "proxy of Figure 38 (extremal). Mean gold reward +- standard error over pools against "
        "d = sqrt(KL), with each pool's own curve faint: a single pool's strongest tilts rest "
        "on its few best-proxy responses.")
def goodhart(kinds=None) -> FigureResult:
    kinds = ex.goodhart_kinds() if kinds is None else kinds
    fig = Figure(figsize=(10, 3.9))
    axes = fig.subplots(1, 2, sharey=False)
    numbers = {}
    for ax, (name, colour) in zip(axes, (("regressional", "tab:green"), ("extremal", "tab:red"))):
        gold, d = np.asarray(kinds[name]), np.asarray(kinds[name + "_sqrt_kl"])
        for row in gold[:20]:
            ax.plot(d, row, color=colour, alpha=0.12, lw=0.8)
        mean, se = mean_se(gold)
        ax.errorbar(d, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=colour,
                    label=f"mean over {len(gold)} pools")
        numbers[name] = {"sqrt_kl": d.tolist(), "gold": mean.tolist(), "gold_se": se.tolist(),
                         "pools": int(len(gold))}
        finish_axes(ax, xlabel="d = sqrt(KL)", ylabel="gold reward",
                    title=f"{name}: proxy = " + ("gold + noise" if name == "regressional"
                                                 else "q + 0.25 (L - 4)"))
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch14_bon_mini_gpt", "ch14",
        "Best-of-N on the mini GPT: 64 answers of chapter 4's SFT model to each of 128 "
        "rephrased questions, ranked by chapter 5's reward model (the proxy) and scored by the "
        "world's gold reward; best-of-N for N = 1..64 estimated from the same samples (every "
        "N-subset averaged), mean +- standard error over questions, against d = sqrt(log N - "
        "(N - 1) / N) (Stiennon et al. 2020; an upper bound where the model repeats an "
        "answer). Left: proxy and gold, with Gao et al.'s best-of-N form fitted to the "
        "gold gained. Right: the length of the picked answers in bytes (the gold reward "
        "charges for every byte past 48).")
def bon_mini_gpt(scored=None) -> FigureResult:
    scored = scored_samples() if scored is None else scored
    curves = ex.bon_curves(scored)
    d = curves["sqrt_kl"]
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    numbers = {"N": list(ex.BON_NS), "sqrt_kl": d.tolist()}
    twin = left.twinx()
    for ax, key in ((twin, "proxy"), (left, "gold")):
        mean, se = mean_se(curves[key], axis=1)
        ax.errorbar(d, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=COLOURS[key],
                    label=f"{key} reward")
        ax.set_ylabel(f"{key} reward" + (" (reward model)" if key == "proxy" else ""),
                      color=COLOURS[key])
        numbers[key], numbers[key + "_se"] = mean.tolist(), se.tolist()
    gold = np.asarray(numbers["gold"])
    numbers["fit"] = _fitted(left, d, gold - gold[0], "bon", gold[0])
    # paired per question: the last N against the peak of the mean curve (chosen after looking,
    # so a little optimistic) and against N = 1 (chosen before)
    numbers["fall_from_peak"] = list(map(float, mean_se(curves["gold"][-1]
                                                        - curves["gold"][int(np.argmax(gold))])))
    numbers["change_from_start"] = list(map(float, mean_se(curves["gold"][-1]
                                                           - curves["gold"][0])))
    numbers["rise_to_8"] = list(map(float, mean_se(curves["gold"][list(ex.BON_NS).index(8)]
                                                   - curves["gold"][0])))
    finish_axes(left, xlabel="d = sqrt(KL)", title="proxy keeps rising, gold peaks and falls")
    left.legend(fontsize=7.5, loc="lower left")
    mean, se = mean_se(curves["bytes"], axis=1)
    right.errorbar(d, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=COLOURS["length"])
    right.axhline(48, color="0.5", lw=0.8, ls=":")
    numbers["bytes"] = mean.tolist()
    finish_axes(right, xlabel="d = sqrt(KL)", ylabel="bytes of the picked answer",
                title="the picks grow longer")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch14_learned_proxies", "ch14",
        "Learned proxies in closed form: linear Bradley-Terry reward models on a pool of "
        "20,000 responses (features: quality, length, its square and eight heavy-tailed "
        "features gold ignores), fitted to pairs labelled by the gold reward, each optimised "
        "by the KL-regularised tilt; mean gold (or score) +- standard error over 128 data "
        "seeds against d = sqrt(KL). Left: more pairs, a later and higher gold peak (Gao et "
        "al. 2023). Middle: the book's Figure 39 (Bai et al. 2022): optimise one reward model "
        "(train), score with one fitted to the other half of the pairs (test) and with gold. "
        "Right: bootstrap ensembles of five members (Coste et al. 2024) against the single "
        "model fitted to all the pairs.")
def learned_proxies(scaling=None, train_test=None, ensembles=None) -> FigureResult:
    scaling = ex.data_scaling() if scaling is None else scaling
    train_test = ex.train_test() if train_test is None else train_test
    ensembles = ex.ensembles() if ensembles is None else ensembles
    fig = Figure(figsize=(14, 3.9))
    axes = fig.subplots(1, 3)
    numbers = {"scaling": {}, "train_test": {}, "ensembles": {}}

    def draw(ax, curves, key, label, **style):
        mean, se = mean_se(np.asarray(curves[key]))
        d = np.asarray(curves["sqrt_kl"]).mean(axis=0)
        ax.errorbar(d, mean, yerr=se, fmt="o-", ms=3, capsize=2, label=label, **style)
        return {"sqrt_kl": d.tolist(), key: mean.tolist(), key + "_se": se.tolist()}

    for n, curves in scaling.items():
        numbers["scaling"][str(n)] = draw(axes[0], curves, "gold", f"{n} pairs")
    finish_axes(axes[0], xlabel="d = sqrt(KL)", ylabel="gold reward",
                title="more preference pairs")
    for key, colour in (("train", "tab:orange"), ("test", "tab:green"), ("gold", "tab:blue")):
        numbers["train_test"][key] = draw(axes[1], train_test, key,
                                          f"{key} reward model" if key != "gold" else "gold",
                                          color=colour)
    axes[1].set_yscale("symlog", linthresh=1.0)
    finish_axes(axes[1], xlabel="d = sqrt(KL)", ylabel="mean score (symlog)",
                title=f"Figure 39: a train and a test reward model ({ex.HALF_PAIRS} pairs each)")
    for name, curves in ensembles.items():
        numbers["ensembles"][name] = draw(axes[2], curves, "gold", name.replace("_", " "))
    finish_axes(axes[2], xlabel="d = sqrt(KL)", ylabel="gold reward",
                title=f"ensembles of {ex.ENSEMBLE_MEMBERS} ({ex.HALF_PAIRS} pairs)")
    for ax in axes:
        ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch14_kl_penalty", "ch14",
        "Does the KL penalty help, or is it early stopping? Exact natural policy gradient on "
        "J = E[proxy] - beta KL (book eq. 82) over Figure 38's pool, from the uniform policy, "
        "one run per beta, recorded every 10 steps: gold (left) and proxy (right) reward "
        "against d = sqrt(KL). Each run heads to where its penalty holds it; the beta = 0 run, "
        "stopped early, passes through the same points (Gao et al. 2023 find the same on "
        "their RL runs).")
def kl_penalty(runs=None) -> FigureResult:
    runs = ex.kl_penalty_runs() if runs is None else runs
    fig = Figure(figsize=(10, 3.9))
    axes = fig.subplots(1, 2)
    numbers = {"step": np.asarray(runs["step"]).tolist()}
    for i, beta in enumerate(ex.PG_BETAS):
        d = np.asarray(runs["sqrt_kl"][i])
        for ax, key in zip(axes, ("gold", "proxy")):
            # the unpenalised run underneath, wide, so that the others show on top of it
            style = dict(ms=5, lw=4, alpha=0.3) if beta == 0 else dict(ms=2.5, lw=1, alpha=0.9)
            ax.plot(d, runs[key][i], "o-", **style,
                    label=f"beta = {beta:g}" + (" (stop early)" if beta == 0 else ""))
        numbers[f"beta={beta:g}"] = {k: np.asarray(runs[k][i]).tolist()
                                     for k in ("sqrt_kl", "gold", "proxy", "length")}
    for ax, key in zip(axes, ("gold", "proxy")):
        finish_axes(ax, xlabel="d = sqrt(KL)", ylabel=f"{key} reward",
                    title=f"{key} along each run")
        ax.legend(fontsize=7.5, loc="lower left" if key == "gold" else "upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)

@figure("ch14_rl_mini_gpt", "ch14",
        "RL against the reward model on the mini GPT: RLOO (chapter 6's loop, 4 questions x 4 "
        "answers a step) from chapter 4's SFT model, on chapter 5's reward model as the proxy, "
        "for three KL coefficients, 4 seeds each; every 4 steps each policy answers 128 "
        "rephrased questions once. Mean over seeds +- standard error against d = sqrt(KL to "
        "the SFT model), the KL estimated by k1 along the answers. Left: the proxy; right: "
        "the gold reward, with Gao et al.'s (2023) RL form d (alpha - beta log d) fitted to "
        "the unpenalised run's gold gained.")
def rl_mini_gpt(runs=None) -> FigureResult:
    runs = substrate.rl_overoptimisation_small() if runs is None else runs
    points = ex.frontier_points(runs)
    fig = Figure(figsize=(11, 3.9))
    axes = fig.subplots(1, 2)
    numbers = {}
    for beta, p in points.items():
        d = np.sqrt(np.maximum(p["kl"], 0.0))
        for ax, key in zip(axes, ("proxy", "gold")):
            ax.errorbar(d, p[key], yerr=p[key + "_se"], fmt="o-", ms=3, capsize=2,
                        label=f"beta = {beta:g}")
        numbers[f"beta={beta:g}"] = {"sqrt_kl": d.tolist(),
                                     **{k: np.asarray(p[k]).tolist()
                                        for k in ("steps", "kl", "proxy", "proxy_se", "gold",
                                                  "gold_se", "bytes")}}
    free = points[ex.FRONTIER_BETAS[0]]
    d = np.sqrt(np.maximum(free["kl"], 0.0))
    numbers["fit_rl"] = _fitted(axes[1], d, free["gold"] - free["gold"][0], "rl",
                                float(free["gold"][0]))
    for ax, key in zip(axes, ("proxy", "gold")):
        finish_axes(ax, xlabel="d = sqrt(KL)", ylabel=f"{key} reward",
                    title=f"{key}" + (" (reward model)" if key == "proxy" else ""))
        ax.legend(fontsize=7.5, loc="upper left" if key == "proxy" else "lower left")
    fig.tight_layout()
    return FigureResult(fig, numbers)
