"""The textbook machinery: exercise stubs, the grader, guide excerpts, figures, the CLI."""

import ast
import json
import os
import pathlib
import re
import time

import numpy as np
import pytest

from rlhf_book import cli
from rlhf_book.textbook import catalog, grading, guides, stubs, substrate
from rlhf_book.textbook.checks import Mismatch, expect_close

CH00 = catalog.get_chapter("ch00")


# ----------------------------------------------------------------------------------------------
# Exercise stubs


def test_committed_stubs_are_up_to_date():
    for chapter in catalog.CHAPTERS:
        if not chapter.exercises:
            continue
        path = chapter.stub_file()
        assert path.exists(), f"{path.name} is missing: run `rlhf-book exercises`"
        text = path.read_text()
        if stubs.is_edited(text) and not os.environ.get("CI"):
            pytest.skip(f"{path.name} holds your own work (edited stub); not compared")
        assert text == stubs.stub_source(chapter), \
            f"{path.name} is stale: run `rlhf-book exercises --force` and commit it"


def test_every_solution_region_belongs_to_an_exercise():
    exercise_files = {}
    for e in catalog.all_exercises().values():
        stub = stubs.stub_function(e)  # raises unless the function has exactly one region
        assert "raise NotImplementedError('Exercise " + e.id in stub.replace('"', "'")
        exercise_files.setdefault(e.module.replace(".", "/") + ".py", 0)
        exercise_files[e.module.replace(".", "/") + ".py"] += 1
    regions = stubs.library_solution_regions()
    assert {path: len(r) for path, r in regions.items()} == exercise_files


def test_stub_keeps_signature_and_contract_and_runs():
    source = stubs.stub_source(CH00)
    namespace = {}
    exec(compile(source, "stub", "exec"), namespace)
    for exercise in CH00.exercises:
        stub, reference = namespace[exercise.function], exercise.reference()
        # the stub's docstring is the contract part of the library's, never the "How:" part
        contract, how = stubs.split_docstring(reference.__doc__)
        assert stub.__doc__ == contract and reference.__doc__.startswith(contract.rstrip())
        assert how == "" or how not in stub.__doc__
        ref_node = ast.parse(pathlib.Path(reference.__code__.co_filename).read_text())
        fn = next(n for n in ref_node.body if getattr(n, "name", None) == exercise.function)
        stub_fn = next(n for n in ast.parse(source).body if getattr(n, "name", None) == exercise.function)
        assert ast.dump(stub_fn.args) == ast.dump(fn.args)
        assert ast.dump(stub_fn.returns) == ast.dump(fn.returns) if fn.returns else True
        # the body ends by raising NotImplementedError, after the argument checks the stub keeps
        # (they are not the exercise); a stub with no checks raises it whatever it is given
        last = stub_fn.body[-1]
        assert isinstance(last, ast.Raise) and last.exc.func.id == "NotImplementedError"
        assert re.match(f"Exercise {re.escape(exercise.id)} ", ast.literal_eval(last.exc.args[0]))
        code = [n for n in stub_fn.body if not (isinstance(n, ast.Expr)
                                                and isinstance(n.value, ast.Constant))]
        if len(code) == 1:
            with pytest.raises(NotImplementedError, match=f"Exercise {re.escape(exercise.id)} "):
                stub(*[None] * len(fn.args.args))


def test_solution_markers_must_pair():
    with pytest.raises(ValueError, match="never closed"):
        stubs.solution_regions("x\n    # BEGIN SOLUTION\n    y\n", "f.py")
    with pytest.raises(ValueError, match="without"):
        stubs.solution_regions("# END SOLUTION\n", "f.py")
    with pytest.raises(ValueError, match="nested"):
        stubs.solution_regions("# BEGIN SOLUTION\n# BEGIN SOLUTION\n", "f.py")


def test_write_stubs_never_overwrites_an_edited_stub(tmp_path):
    assert stubs.write_stubs([CH00], tmp_path) == {str(tmp_path / f"{CH00.key}.py"): "written"}
    path = tmp_path / f"{CH00.key}.py"
    assert not stubs.is_edited(path.read_text())
    edited = path.read_text().replace("raise NotImplementedError('Exercise 0.1", "return 1 # ('", 1)
    path.write_text(edited)
    assert stubs.is_edited(edited)
    assert "kept" in stubs.write_stubs([CH00], tmp_path)[str(path)]
    assert path.read_text() == edited
    assert stubs.write_stubs([CH00], tmp_path, force=True)[str(path)] == "written"
    assert path.read_text() == stubs.stub_source(CH00)


# ----------------------------------------------------------------------------------------------
# The grader


def _write_solution(directory, exercise_id, body):
    """Replace one stub's ``raise NotImplementedError`` line with ``body`` (indented)."""
    path = directory / f"{CH00.key}.py"
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if f"NotImplementedError('Exercise {exercise_id} "
             in line.replace('"', "'"))
    indent = re.match(r"\s*", lines[k]).group(0)
    lines[k:k + 1] = [indent + line for line in body.splitlines()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def stub_dir(tmp_path):
    stubs.write_stubs([CH00], tmp_path)
    return tmp_path


def _by_id(results):
    return {r.id: r for r in results}


def test_grade_stubs_not_started_and_one_correct_edit_passes(stub_dir):
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    assert {r.status for r in results.values()} == {grading.NOT_STARTED}
    _write_solution(stub_dir, "0.1", "return jnp.tril(jnp.ones((t, t), dtype=bool))")
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    assert results["0.1"].status == grading.PASSED
    assert {results[i].status for i in ("0.2", "0.3", "0.4")} == {grading.NOT_STARTED}


def test_grade_reports_wrong_shape_exceptions_hangs_and_crashes(stub_dir):
    _write_solution(stub_dir, "0.1", "return jnp.ones((t,), dtype=bool)")          # wrong shape
    _write_solution(stub_dir, "0.2", "return q / 0 + {}['x']")                     # raises
    _write_solution(stub_dir, "0.3", "while True:\n    pass")                       # hangs
    _write_solution(stub_dir, "0.4", "import os\nos._exit(3)")                     # kills Python
    results = _by_id(grading.grade([CH00], "exercises", stub_dir, timeout=3))
    assert results["0.1"].status == grading.FAILING
    assert "shape (1,), expected (1, 1)" in results["0.1"].hint
    assert "App. A.1" in results["0.1"].hint  # the book section
    assert results["0.2"].status == grading.FAILING and "KeyError" in results["0.2"].message
    assert results["0.3"].status == grading.TIMED_OUT
    assert results["0.4"].status == grading.FAILING and "exited" in results["0.4"].message


def test_grade_a_stub_file_that_does_not_import(stub_dir):
    (stub_dir / f"{CH00.key}.py").write_text("def causal_mask(:\n")
    results = grading.grade([CH00], "exercises", stub_dir)
    assert len(results) == len(CH00.exercises)
    assert all(r.status == grading.FAILING and "SyntaxError" in r.message for r in results)


def test_check_in_place_and_its_hint(capsys):
    import jax.numpy as jnp

    assert grading.check("0.1", lambda t: jnp.tril(jnp.ones((t, t), bool))).status == grading.PASSED
    result = grading.check("0.1", lambda t: jnp.triu(jnp.ones((t, t), bool)))
    assert result.status == grading.FAILING
    # triu instead of tril: at t = 2 the entries [0, 1] and [1, 0] are wrong, 2 of 4
    assert "causal_mask(2): 2 entries differ (of 4), the first at [0, 1]" in result.message
    assert "got True, expected False" in result.message
    assert "failing" in capsys.readouterr().out
    result = grading.check("0.1", lambda t: 1 / 0, quiet=True)
    assert result.status == grading.FAILING and "ZeroDivisionError" in result.message
    with pytest.raises(ValueError, match="exercise id"):
        grading.check("99.9", print)


@pytest.mark.parametrize("in_process", [False, True], ids=["worker", "in process"])
def test_check_times_out(in_process):
    def forever(t):
        while True:
            pass

    result = grading.check("0.1", forever, timeout=0.5, quiet=True, in_process=in_process)
    assert result.status == grading.TIMED_OUT


def test_calling_another_unfinished_exercise_is_failing_not_not_started():
    def uses_unfinished(t):
        raise NotImplementedError("Exercise 0.3 (log-probs ...) is not started")

    result = grading.check("0.1", uses_unfinished, quiet=True)
    assert result.status == grading.FAILING and "0.3" in result.message


def test_expect_close_reports_how_many_entries_differ_and_the_first():
    # 5 vs 2 and 7 vs 3 differ, 1 vs 1 does not: 2 of the 3 entries
    with pytest.raises(Mismatch, match=r"f\(x\): 2 entries differ \(of 3\), the first at \[1\]: "
                                       r"got 5, expected 2$"):
        expect_close(np.array([1.0, 5.0, 7.0]), np.array([1.0, 2.0, 3.0]), "f(x)")
    with pytest.raises(Mismatch, match=r"^s: got 4, expected 3$"):  # one value: no count
        expect_close(np.float32(4.0), 3.0, "s")
    with pytest.raises(Mismatch, match=r"shape \(3,\), expected \(2,\)"):
        expect_close(np.zeros(3), np.zeros(2), "g")
    with pytest.raises(Mismatch, match="got nan"):
        expect_close(np.array([np.nan]), np.array([0.0]), "h")


def test_cli_grade_reference_and_stubs(capsys, stub_dir):
    assert cli.main(["grade", "--impl", "reference", "ch00"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"  \d+\.\d+ ", line)]
    assert len(rows) == len(CH00.exercises) and all(" passed " in row for row in rows)
    assert f"{len(CH00.exercises)} passed (of {len(CH00.exercises)} exercises)" in out
    assert cli.main(["grade", "ch00", "--exercises-dir", str(stub_dir)]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"  \d+\.\d+ ", line)]
    assert len(rows) == len(CH00.exercises) and all("not started" in row for row in rows)


def test_check_stops_a_compiled_infinite_loop_and_the_caller_goes_on():
    """A loop inside jit never returns to Python, so no alarm can stop it in process; check()
    runs the function in a worker process and kills it."""
    import jax
    import jax.numpy as jnp

    def spins(t):  # x falls forever and stays below 1: the loop never ends
        x = jax.lax.while_loop(lambda c: c < 1.0, lambda c: c - 1.0, 0.0)
        return jnp.tril(jnp.ones((t, t), bool)) & (x < 1.0)

    start = time.monotonic()
    result = grading.check("0.1", jax.jit(spins, static_argnums=0), timeout=2, quiet=True)
    elapsed = time.monotonic() - start
    assert result.status == grading.TIMED_OUT and "timed out after 2s" in result.message
    # 2 s of grading plus starting a Python with JAX (about 1 s alone, more on a busy machine)
    assert elapsed < 2 + 20, elapsed
    # this process is fine: the next check runs and passes
    assert grading.check("0.1", lambda t: jnp.tril(jnp.ones((t, t), bool)),
                         quiet=True).status == grading.PASSED


def test_check_shows_what_the_function_prints(capsys):
    import jax.numpy as jnp

    def loud(t):
        print("mask of size", t)
        return jnp.tril(jnp.ones((t, t), bool))

    result = grading.check("0.1", loud)
    assert result.status == grading.PASSED
    assert "mask of size 2" in result.output  # printed in the worker, shown here
    shown = capsys.readouterr().out
    assert "your code printed:" in shown and "| mask of size 2" in shown


def test_check_grades_in_process_what_cannot_be_sent_and_says_so():
    import threading

    import jax.numpy as jnp

    lock = threading.Lock()  # a lock cannot be pickled

    def with_a_lock(t):
        with lock:
            return jnp.tril(jnp.ones((t, t), bool))

    result = grading.check("0.1", with_a_lock, quiet=True)
    assert result.status == grading.PASSED
    assert "graded in this process" in result.note and "lock" in result.note


def _sft_picked(logits, tokens):
    import jax
    import jax.numpy as jnp

    logp = jax.nn.log_softmax(logits[:, :-1])
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def _sft_without_mask(logits, tokens, loss_mask):
    import jax.numpy as jnp

    return -jnp.mean(_sft_picked(logits, tokens))


def _sft_with_unshifted_mask(logits, tokens, loss_mask):
    import jax.numpy as jnp

    m = loss_mask[:, :-1]  # should be loss_mask[:, 1:]: logits[:, t] predicts tokens[:, t + 1]
    return -jnp.sum(_sft_picked(logits, tokens) * m) / jnp.sum(m)


@pytest.mark.parametrize("wrong, hint", [
    (_sft_without_mask, "looks like no mask"),
    (_sft_with_unshifted_mask, "looks like the mask is not shifted"),
], ids=["no mask", "unshifted mask"])
def test_the_sft_loss_hint_names_a_missing_or_unshifted_mask(wrong, hint):
    result = grading.check("4.3", wrong, quiet=True, in_process=True)
    assert result.status == grading.FAILING and hint in result.message, result.message


def test_the_k3_hint_explains_the_clamp():
    import jax.numpy as jnp

    def unclamped(logp, ref_logp):  # right everywhere but at log r = +100, where e^100 = inf
        log_r = ref_logp - logp
        return jnp.expm1(log_r) - log_r

    result = grading.check("15.1", unclamped, quiet=True, in_process=True)
    assert result.status == grading.FAILING
    assert "returned inf" in result.message and "clamp the log-ratio" in result.message
    assert "not finite" not in result.message  # the generic message no longer pre-empts it


def test_a_numpy_solution_under_jit_gets_the_jax_numpy_hint():
    def numpy_k3(logp, ref_logp):  # right when called eagerly; jit passes tracers to NumPy
        log_r = np.minimum(np.asarray(ref_logp) - np.asarray(logp), 20.0)
        return np.expm1(log_r) - log_r

    for in_process in (True, False):
        result = grading.check("15.1", numpy_k3, quiet=True, in_process=in_process)
        assert result.status == grading.FAILING
        assert result.message.startswith("your function is traced by jit: use jax.numpy, not "
                                          "NumPy"), result.message
        assert "TracerArrayConversionError" in result.message


def test_a_failing_check_says_how_many_of_its_sub_checks_fail():
    import jax.numpy as jnp

    def upper(t):  # wrong for every t >= 2, right for t = 1
        return jnp.triu(jnp.ones((t, t), bool))

    exercise = catalog.get_exercise("0.1")
    with pytest.raises(Mismatch) as first:  # called plainly, a check stops at the first failure
        exercise.checker()(upper)
    result = grading.run_check(exercise, upper)
    assert result.status == grading.FAILING
    counted = re.search(r"\[(\d+) of the (\d+) sub-checks fail\]$", result.message)
    assert counted, result.message
    failing, run = int(counted[1]), int(counted[2])
    assert 2 <= failing < run  # several sizes fail; t = 1 passes
    assert result.message.startswith(str(first.value))  # the first failure comes first


def _stub_with_fingerprint(text: str) -> str:
    """A stub file's text made "untouched" again: its fingerprint line recomputed."""
    body = text.rpartition(stubs.FINGERPRINT)[0]
    return body + stubs.FINGERPRINT + stubs._digest(body) + "\n"


def test_exercises_check_never_suggests_overwriting_edited_stubs(tmp_path, capsys):
    ch15 = catalog.get_chapter("ch15")
    stubs.write_stubs([CH00, catalog.get_chapter("ch06"), ch15], tmp_path)
    # ch00: edited by the reader, and the library's stub has since changed (an old docstring)
    ch00 = tmp_path / f"{CH00.key}.py"
    edited = ch00.read_text().replace("NotImplementedError('Exercise 0.1", "ValueError('mine", 1)
    edited = edited.replace("Exercises of chapter 0", "Old exercises of chapter 0", 1)
    ch00.write_text(edited)
    # ch06: never edited, generated from an older library
    ch06 = tmp_path / f"{catalog.get_chapter('ch06').key}.py"
    old = ch06.read_text().replace("Exercises of chapter 6", "Old exercises of chapter 6", 1)
    ch06.write_text(_stub_with_fingerprint(old))
    # ch15: missing
    (tmp_path / f"{ch15.key}.py").unlink()
    chapters = ["ch00", "ch06", "ch15"]
    assert cli.main(["exercises", *chapters, "--check", "--exercises-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "--force" not in out
    lines = {pathlib.Path(line.split()[1].rstrip(",")).name: line for line in out.splitlines()}
    assert "has your edits" in lines[ch00.name] and "--diff" in lines[ch00.name]
    assert "untouched" in lines[ch06.name] and "rlhf-book exercises ch06" in lines[ch06.name]
    assert lines[f"{ch15.key}.py"].startswith("missing:")
    # --diff shows the change and touches nothing
    assert cli.main(["exercises", "ch00", "--diff", "--exercises-dir", str(tmp_path)]) == 0
    diff = capsys.readouterr().out
    assert '-"""Old exercises of chapter 0' in diff and '+"""Exercises of chapter 0' in diff
    assert ch00.read_text() == edited
    # regenerating keeps the edited file, rewrites the untouched one, creates the missing one
    assert cli.main(["exercises", *chapters, "--exercises-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ch00.read_text() == edited and "--force" not in out
    assert ch06.read_text() == stubs.stub_source(catalog.get_chapter("ch06"))
    assert (tmp_path / f"{ch15.key}.py").exists()


# ----------------------------------------------------------------------------------------------
# Chapter guides


def test_guides_excerpts_match_the_source():
    assert not guides.stale(), "guide excerpts drifted: run `rlhf-book chapters --sync`"


def test_every_chapter_has_a_guide_with_excerpts():
    for chapter in catalog.CHAPTERS:
        text = chapter.guide().read_text()
        assert guides.GUIDE_BLOCK.search(text), f"{chapter.guide().name} has no code excerpts"
        for exercise in chapter.exercises:
            assert exercise.function in text, f"{chapter.guide().name} omits exercise {exercise.id}"


def test_guide_sync_rewrites_a_drifted_excerpt(tmp_path):
    (tmp_path / "chapters").mkdir()
    guide = tmp_path / "chapters" / "ch99_test.md"
    guide.write_text("# Test\n\n<!-- excerpt: causal-mask -->\nold code\n<!-- /excerpt -->\n")
    assert guides.stale(tmp_path) == ["ch99_test.md: causal-mask"]
    assert guides.sync(tmp_path) == [guide]
    text = guide.read_text()
    assert "def causal_mask(t: int)" in text and "# rlhf_book/lm/gpt.py" in text
    assert "BEGIN SOLUTION" not in text  # exercise markers are left out
    assert guides.stale(tmp_path) == [] and guides.sync(tmp_path) == []
    guide.write_text("<!-- excerpt: no-such-region -->\n<!-- /excerpt -->\n")
    with pytest.raises(ValueError, match="no-such-region"):
        guides.sync(tmp_path)


def test_source_markers_are_well_formed(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("# [guide:x]\ny = 1\n")
    with pytest.raises(ValueError, match="never closed"):
        guides.source_excerpts(package)
    (package / "a.py").write_text("# [guide:x]\n# [guide:y]\n# [/guide]\n")
    with pytest.raises(ValueError, match="inside"):
        guides.source_excerpts(package)
    (package / "a.py").write_text("    # [guide:x]\n    z = 2\n    # [/guide]\n")
    assert guides.source_excerpts(package)["x"].code == "z = 2"


# ----------------------------------------------------------------------------------------------
# Figures


def test_figures_write_pngs_and_a_manifest(tmp_path):
    from rlhf_book.textbook import figures
    from rlhf_book.textbook.figures import ch00_mini_gpt as ch00

    registry = figures.load_all()
    assert {"ch00_causal_mask", "ch00_temperature", "ch00_parameter_count",
            "ch00_chat_template", "ch00_pretrain_loss"} <= set(registry)
    # every figure but the minute-long pretraining run, through the same path as the CLI
    fast = {k: v for k, v in registry.items() if v.chapter == "ch00" and k != "ch00_pretrain_loss"}
    saved = dict(figures.REGISTRY)
    try:
        figures.REGISTRY.clear()
        figures.REGISTRY.update(fast)
        entries = figures.write_figures(["ch00"], tmp_path)
    finally:
        figures.REGISTRY.update(saved)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(entries) == set(fast) == set(manifest)
    assert {spec.chapter for spec in registry.values()} >= {"ch00", "ch03", "ch04"}
    for name in fast:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["ch00_parameter_count"]["numbers"]["total"] == 841_344
    assert manifest["ch00_parameter_count"]["numbers"]["with_vocab_256"] == 840_448
    assert manifest["ch00_causal_mask"]["numbers"]["allowed_pairs"] == 12 * 13 // 2
    assert manifest["ch00_causal_mask"]["numbers"]["max_change_before_edit"] == 0.0
    # tau = 0.5 squares and renormalises the policy {0.6, 0.3, 0.1}
    probs = manifest["ch00_temperature"]["numbers"]["tau=0.5"]["probabilities"]
    np.testing.assert_allclose(probs, np.array([0.36, 0.09, 0.01]) / 0.46, atol=1e-4)

    history = {"step": np.arange(1, 101), "loss": np.linspace(5.5, 1.0, 100),
               "eval_step": np.array([50, 100]), "eval_loss": np.array([2.0, 1.1])}
    result = ch00.pretrain_loss(history, entropy=3.0)
    assert result.numbers["final_eval_loss"] == pytest.approx(1.1)
    assert result._repr_png_()[:4] == b"\x89PNG"


def test_committed_figures_and_manifest_cover_the_registry():
    from rlhf_book.textbook import figures

    root = catalog.project_root() / "figures"
    manifest = json.loads((root / "manifest.json").read_text())
    for name in figures.load_all():
        assert name in manifest, f"figures/manifest.json lacks {name}: run `rlhf-book figures`"
        assert (root / manifest[name]["file"]).exists()


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_exercises_check_and_chapters(capsys):
    assert cli.main(["exercises", "--check"]) == 0
    assert cli.main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "ch00_mini_gpt" in out and "stale" not in out
    assert cli.main(["grade", "ch42"]) == 2
    assert "chapter must be one of" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The substrate cache

def test_substrate_fingerprint_tracks_settings_and_source(monkeypatch):
    from rlhf_book.lm import train
    config = train.TrainConfig(steps=10)
    key = substrate.fingerprint(config, 0)
    assert key == substrate.fingerprint(train.TrainConfig(steps=10), 0)
    assert key != substrate.fingerprint(train.TrainConfig(steps=11), 0)
    assert key != substrate.fingerprint(config, 1)
    assert key != substrate.fingerprint(config, 0, sources=("ch04_instruction_tuning",))
    real = substrate.source_text
    monkeypatch.setattr(substrate, "source_text", lambda *names: real(*names) + "# edited\n")
    assert key != substrate.fingerprint(config, 0)
    with pytest.raises(ValueError, match="rlhf_book/no_such_module"):
        real("no_such_module")


def test_substrate_cache_computes_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv(substrate.CACHE_ENV, str(tmp_path))
    assert substrate.cache_dir() == tmp_path
    params = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.int32)}
    history = {"loss": np.array([2.0, 1.5, 1.25]), "step": np.array([1, 2, 3])}
    calls = []

    def compute():
        calls.append(1)
        return params, history

    for _ in range(2):
        got, hist = substrate.cached("toy", "abc", compute)
        np.testing.assert_array_equal(got["w"], params["w"])
        np.testing.assert_array_equal(got["b"], params["b"])
        np.testing.assert_array_equal(hist["loss"], history["loss"])
    assert len(calls) == 1 and substrate.path_for("toy", "abc").is_file()
    assert substrate.load("toy", "other-key") is None
    substrate.path_for("toy", "abc").write_bytes(b"not a checkpoint")  # unreadable: recompute
    substrate.cached("toy", "abc", compute)
    assert len(calls) == 2 and substrate.load("toy", "abc") is not None
