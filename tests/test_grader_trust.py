"""The grader as a trust boundary: code in the learner's exercise file cannot make
``rlhf-book grade`` report a pass it did not earn, and cannot outlive or stall the grader.

Each test writes a hostile (or careless) exercise file into a temporary folder and grades it
as ``rlhf-book grade`` does. The five tamper routes below all reported "passed" for functions
that still raise ``NotImplementedError`` when the learner's code ran in the process that also
ran the checks and wrote the verdict.

The tests name no library function literally (they take names from the catalogue): they test
the grader, not the functions, and ``chapters/EQUATIONS.md`` lists the tests that name one."""

import math
import pathlib
import re
import time

import numpy as np
import pytest

from rlhf_book import cli
from rlhf_book.textbook import catalog, grading, stubs

CH00 = catalog.get_chapter("ch00")
CH06 = catalog.get_chapter("ch06")
IDS = [e.id for e in CH00.exercises]


@pytest.fixture
def stub_dir(tmp_path):
    stubs.write_stubs([CH00], tmp_path)
    return tmp_path


def _append(directory, code: str, chapter=CH00) -> None:
    path = directory / f"{chapter.key}.py"
    path.write_text(path.read_text() + "\n" + code + "\n")


def _solve(directory, exercise_id: str, body: str, chapter=CH00) -> None:
    """Replace one stub's ``raise NotImplementedError`` line with ``body`` (indented)."""
    path = directory / f"{chapter.key}.py"
    lines = path.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if f"NotImplementedError('Exercise {exercise_id} "
             in line.replace('"', "'"))
    indent = re.match(r"\s*", lines[k]).group(0)
    lines[k:k + 1] = [indent + line for line in body.splitlines()]
    path.write_text("\n".join(lines) + "\n")


def _by_id(results):
    return {r.id: r for r in results}


def _assert_nothing_passed(results):
    assert len(results) == len(IDS)
    assert not [r for r in results if r.status == grading.PASSED], [str(r) for r in results]


# ----------------------------------------------------------------------------------------------
# The five tamper routes, each appended to a file of untouched stubs


# (a) replace the chapter's checks with no-ops (the functions named after the exercises)
NO_OP_CHECKS = f"""
import rlhf_book.textbook.checks.{CH00.key} as _checks
for _name in {[e.function for e in CH00.exercises]!r}:
    setattr(_checks, _name, lambda fn: None)
"""

# (b) wrap run_check where the grader's worker looks it up
FORGED_RUN_CHECK = """
import sys
import rlhf_book.textbook.grading as _grading

def _forged(exercise, fn, timeout=None, load_error=""):
    return _grading.GradeResult(exercise.id, exercise.title, "passed", section=exercise.section)

for _module in (_grading, sys.modules.get("__main__")):
    if hasattr(_module, "run_check"):
        _module.run_check = _forged
"""

# (c) patch dataclasses.asdict, which serialised the verdict
FORGED_ASDICT = """
import dataclasses
_real_asdict = dataclasses.asdict

def _asdict(obj, *args, **kwargs):
    out = _real_asdict(obj, *args, **kwargs)
    if "status" in out:
        out.update(status="passed", message="")
    return out

dataclasses.asdict = _asdict
"""

# forged verdicts in the old protocol, and replies of the new one with a made-up nonce
FORGED_LINES = """
import json, os, stat
_lines = b"".join(
    json.dumps({"result": {"id": i, "title": "forged", "status": "passed", "seconds": 0.0,
                           "message": "", "section": ""}}).encode() + b"\\n"
    for i in ("0.1", "0.2", "0.3", "0.4"))
_lines += b"".join(
    json.dumps({"nonce": "0" * 32, "seq": s, "id": i, "ok": None}).encode() + b"\\n"
    for s in range(1, 40) for i in ("", "0.1", "0.2", "0.3", "0.4"))
"""

# (d) write them to the result pipe (every pipe this process may write to)
FORGED_TO_PIPES = FORGED_LINES + """
for _fd in range(3, 256):
    try:
        if stat.S_ISFIFO(os.fstat(_fd).st_mode):
            os.write(_fd, _lines)
    except OSError:
        pass
"""

# (e) write them to every open descriptor
FORGED_TO_EVERY_FD = FORGED_LINES + """
for _fd in range(0, 256):
    try:
        os.write(_fd, _lines)
    except OSError:
        pass
"""


@pytest.mark.parametrize("code", [NO_OP_CHECKS, FORGED_RUN_CHECK, FORGED_ASDICT],
                         ids=["no-op checks", "forged run_check", "patched asdict"])
def test_tampering_with_the_grader_from_the_exercise_file_passes_nothing(stub_dir, code):
    _append(stub_dir, code)
    results = grading.grade([CH00], "exercises", stub_dir)
    _assert_nothing_passed(results)
    # the learner's process never holds a check or a verdict: the stubs are simply not started
    assert {r.status for r in results} == {grading.NOT_STARTED}


@pytest.mark.parametrize("code", [FORGED_TO_PIPES, FORGED_TO_EVERY_FD],
                         ids=["result pipe", "every descriptor"])
def test_forged_result_lines_are_rejected(stub_dir, code):
    _append(stub_dir, code)
    results = grading.grade([CH00], "exercises", stub_dir)
    _assert_nothing_passed(results)
    assert all(r.status == grading.FAILING and "protocol violation" in r.message
               for r in results), [str(r) for r in results]


def test_a_line_that_is_not_the_reply_fails_one_exercise_and_grading_goes_on(stub_dir):
    _solve(stub_dir, "0.1", "import os\nfor fd in range(256):\n    try:\n"
                            "        os.write(fd, b'not json\\n')\n    except OSError:\n"
                            "        pass\nreturn jnp.tril(jnp.ones((t, t), dtype=bool))")
    _solve(stub_dir, "0.2", "raise NotImplementedError('Exercise 0.2 is not started')")
    _solve(stub_dir, "0.3", "return jnp.take_along_axis(jax.nn.log_softmax(logits), "
                            "targets[..., None], axis=-1)[..., 0]")
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    assert results["0.1"].status == grading.FAILING
    assert "protocol violation" in results["0.1"].message
    assert results["0.2"].status == grading.NOT_STARTED   # a fresh learner process
    assert results["0.3"].status == grading.PASSED
    assert results["0.4"].status == grading.NOT_STARTED


def test_the_librarys_own_solution_is_reported_not_passed(tmp_path):
    # the exercise's function imported from the library over the stub, as a learner might:
    # from rlhf_book.ch06_policy_gradients.losses import <function> as <function>
    exercise = catalog.get_exercise("6.3")
    stubs.write_stubs([CH06], tmp_path)
    _append(tmp_path, f"from {exercise.module} import {exercise.function} as {exercise.function}",
            chapter=CH06)
    results = _by_id(grading.grade([CH06], "exercises", tmp_path))
    assert results["6.3"].status != "passed"
    assert results["6.3"].status == grading.USES_REFERENCE
    assert f"{exercise.module}.{exercise.function}" in results["6.3"].message
    assert {r.status for i, r in results.items() if i != "6.3"} == {grading.NOT_STARTED}
    assert "uses the reference" in grading.format_row(results["6.3"])
    assert "1 uses the reference" in grading.format_summary(list(results.values()))


def test_the_grader_gives_the_same_verdicts_and_hints_as_grading_in_place(stub_dir):
    # wrong in every exercise: a plain call, a jit of the function, a gradient, random draws, ...
    _solve(stub_dir, "0.1", "return jnp.triu(jnp.ones((t, t), dtype=bool))")
    _solve(stub_dir, "0.2", "s = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])\n"
                            "return jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1) @ v")
    _solve(stub_dir, "0.3", "return -jnp.take_along_axis(jax.nn.log_softmax(logits), "
                            "targets[..., None], axis=-1)[..., 0]")
    _solve(stub_dir, "0.4", "tokens = jax.random.categorical(key, logits)\n"
                            "return tokens, jnp.take_along_axis(jax.nn.log_softmax(logits), "
                            "tokens[..., None], axis=-1)[..., 0]")
    # the KV cache: a strict mask (a query may not read its own key); a decode step that embeds
    # every token at position 0 (a record config and a traced start cross the boundary)
    _solve(stub_dir, "0.5", "keys = jax.lax.dynamic_update_slice(cache[0], k, (0, 0, start, 0))\n"
                            "values = jax.lax.dynamic_update_slice(cache[1], v, (0, 0, start, 0))\n"
                            "T = keys.shape[2]\n"
                            "return (keys, values), jnp.arange(T)[None] < start + jnp.arange(k.shape[2])[:, None]")
    _solve(stub_dir, "0.6", "x = embed(params, tokens, 0)\nnew = []\n"
                            "for i, c in enumerate(cache):\n"
                            "    p = jax.tree_util.tree_map(lambda leaf: leaf[i], params['blocks'])\n"
                            "    x, c = block(p, x, config, c, start)\n    new.append(c)\n"
                            "return unembed(params, x)[0], tuple(new)")
    # the primer: the gradient of the mean loss, a one-level dict, an unrolled Python loop
    _solve(stub_dir, "0.7", "return jax.grad(lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))"
                            "(p, xs, ys)))(params)")
    _solve(stub_dir, "0.8", "return {k: params[k] - learning_rate * grads[k] for k in params}")
    _solve(stub_dir, "0.9", "out, m = [], xs[0]\nfor x in xs:\n    m = decay * m + (1 - decay) * x\n"
                            "    out.append(m)\nreturn jnp.stack(out)")
    remote = grading.grade([CH00], "exercises", stub_dir)
    functions, _ = grading.load_functions(CH00, "exercises", stub_dir)
    local = [grading.run_check(e, functions[e.id]) for e in CH00.exercises]
    assert [(r.status, r.message) for r in remote] == [(r.status, r.message) for r in local]
    assert {r.status for r in remote} == {grading.FAILING}


def test_the_reference_is_graded_normally_with_impl_reference():
    results = grading.grade([CH00], "reference")
    assert {r.status for r in results} == {grading.PASSED}


# ----------------------------------------------------------------------------------------------
# Dependent exercises and printed output


def _callers_and_callees():
    """(caller, callee) exercise pairs of chapter 6 where the caller's stub calls the callee."""
    return [(e, callee) for e in CH06.exercises for callee in grading.callees(e)
            if callee.chapter == CH06]


def test_a_dependent_exercise_is_graded_with_the_reference_of_the_one_it_calls(tmp_path):
    pairs = _callers_and_callees()
    # CISPO's loss aggregates; the GRPO step takes group advantages, PPO's objective and an
    # aggregation
    assert [(a.id, b.id) for a, b in pairs] == [("6.5", "6.6"), ("6.9", "6.2"), ("6.9", "6.3"),
                                                ("6.9", "6.6")]
    caller, callee = pairs[0]
    stubs.write_stubs([CH06], tmp_path)
    # the caller solved from its contract (weight = min(rho, cap), held constant), its
    # callee wrong in a way that prints: a sum where a mean is asked for
    _solve(tmp_path, caller.id, "weight = jax.lax.stop_gradient(jnp.minimum("
                                "jnp.exp(logp - old_logp), ratio_cap))\n"
                                "per_token = -weight * adv * logp", chapter=CH06)
    _solve(tmp_path, callee.id, "print('summing', per_token_loss.shape)\n"
                                "return jnp.sum(per_token_loss * mask)", chapter=CH06)
    results = _by_id(grading.grade([CH06], "exercises", tmp_path))
    assert results[caller.id].status == grading.PASSED, str(results[caller.id])
    assert f"graded with the reference {callee.id} ({callee.function})" in results[caller.id].note
    assert "summing" not in results[caller.id].output  # the wrong callee never ran for it
    assert results[callee.id].status == grading.FAILING
    assert "summing" in results[callee.id].output
    row = grading.format_row(results[caller.id])
    assert f"note: graded with the reference {callee.id}" in row
    # in place (pytest --impl=exercises) the same, and with the callee not started at all
    stubs.write_stubs([CH06], tmp_path, force=True)
    _solve(tmp_path, caller.id, "weight = jax.lax.stop_gradient(jnp.minimum("
                                "jnp.exp(logp - old_logp), ratio_cap))\n"
                                "per_token = -weight * adv * logp", chapter=CH06)
    functions, _ = grading.load_functions(CH06, "exercises", tmp_path)
    local = grading.run_check(caller, functions[caller.id])
    assert local.status == grading.PASSED and callee.id in local.note


def test_a_wrong_caller_gets_the_same_hint_whatever_state_its_callee_is_in(tmp_path):
    caller, callee = _callers_and_callees()[0]
    hints = []
    for callee_body in (None, "return jnp.sum(per_token_loss * mask)"):
        stubs.write_stubs([CH06], tmp_path, force=True)
        # no cap on the weight: wrong where rho > ratio_cap
        _solve(tmp_path, caller.id, "weight = jax.lax.stop_gradient(jnp.exp(logp - old_logp))\n"
                                    "per_token = -weight * adv * logp", chapter=CH06)
        if callee_body:
            _solve(tmp_path, callee.id, callee_body, chapter=CH06)
        functions, _ = grading.load_functions(CH06, "exercises", tmp_path)
        result = grading.run_check(caller, functions[caller.id])
        assert result.status == grading.FAILING
        assert "NotImplementedError" not in result.message and callee.function not in result.message
        hints.append(result.message)
    assert hints[0] == hints[1]


def test_what_the_learners_code_prints_is_shown_truncated(stub_dir):
    _solve(stub_dir, "0.1", "print('\\x1b[31mred\\x1b[0m', t)\n"
                            "return jnp.tril(jnp.ones((t, t), dtype=bool))")
    _solve(stub_dir, "0.3", "for i in range(5000):\n    print('line', i)\n"
                            "return jnp.zeros(targets.shape)")
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    first = results["0.1"]
    assert first.status == grading.PASSED
    assert "?[31mred?[0m 1" in first.output and "\x1b" not in first.output  # no terminal codes
    assert "your code printed:" in grading.format_row(first)
    many = results["0.3"].output
    assert many.startswith("... (earlier output left out)") and many.endswith("line 4999")
    assert len(many) <= grading.OUTPUT_LIMIT + 40
    assert results["0.2"].output == results["0.4"].output == ""  # nothing printed, nothing shown


# ----------------------------------------------------------------------------------------------
# Hygiene: children, hangs on import, memory, arguments


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_child_the_learner_forks_does_not_outlive_the_grader(stub_dir, tmp_path):
    pid_file = tmp_path / "child.pid"
    _solve(stub_dir, "0.1", "import subprocess\n"
                            "child = subprocess.Popen(['sleep', '300'])\n"
                            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                            "raise NotImplementedError('Exercise 0.1 is not started')")
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    assert results["0.1"].status == grading.NOT_STARTED
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the learner's child outlived the grader"


def test_a_file_that_hangs_on_import_costs_one_timeout_per_chapter(stub_dir):
    _append(stub_dir, "import time\ntime.sleep(600)")
    start = time.monotonic()
    results = grading.grade([CH00], "exercises", stub_dir, import_timeout=2.0)
    elapsed = time.monotonic() - start
    assert len(results) == len(IDS)
    assert all(r.status == grading.FAILING and "did not finish within 2s" in r.message
               for r in results), [str(r) for r in results]
    assert elapsed < 2.0 + grading.STARTUP_TIMEOUT and elapsed < 2.0 * len(IDS) + 30


def test_the_learner_runs_under_a_memory_limit(stub_dir):
    # 16 GiB of address space: refused under the default 8 GiB limit (never touched, so harmless
    # where there is no limit, where it returns an array of the wrong shape instead)
    _solve(stub_dir, "0.1", "return np.empty((2**31,), np.float64)")
    _solve(stub_dir, "0.2", "return jax.nn.softmax(jnp.where(mask, q @ jnp.swapaxes(k, -1, -2) "
                            "/ math.sqrt(q.shape[-1]), -1e30), axis=-1) @ v")
    results = _by_id(grading.grade([CH00], "exercises", stub_dir))
    assert results["0.1"].status == grading.FAILING
    assert "MemoryError" in results["0.1"].message
    # JAX still starts, compiles and runs under the limit: a correct function is graded
    assert results["0.2"].status in (grading.PASSED, grading.FAILING)
    assert "MemoryError" not in results["0.2"].message
    with pytest.raises(ValueError, match="memory_limit"):
        grading.grade([CH00], "exercises", stub_dir, memory_limit=1024)


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, 0])
def test_grade_timeout_must_be_a_finite_positive_number(value, capsys):
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        grading.grade([CH00], "reference", timeout=value)
    assert cli.main(["grade", "ch00", "--impl", "reference", "--timeout", str(value)]) == 2
    captured = capsys.readouterr()
    assert "grading" not in captured.out  # nothing ran
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhf-book grade: error: timeout must be")


# ----------------------------------------------------------------------------------------------
# The wire format


def test_the_wire_format_round_trips_the_values_checks_exchange():
    import jax.numpy as jnp

    value = {"a": [np.arange(6, dtype=np.int32).reshape(2, 3), jnp.ones((2,), jnp.float32)],
             "b": (1, 2.5, None, True, "text", np.float32(0.5), np.zeros((0, 3))),
             3: np.array(True)}
    out = grading.decode(grading.encode(value))
    assert set(out) == {"a", "b", 3} and isinstance(out["b"], tuple)
    np.testing.assert_array_equal(out["a"][0], value["a"][0])
    assert out["a"][0].dtype == np.int32 and isinstance(out["a"][0], np.ndarray)
    assert out["a"][1].shape == (2,) and not isinstance(out["a"][1], np.ndarray)  # a JAX array
    assert out["b"][:5] == (1, 2.5, None, True, "text")
    assert isinstance(out["b"][5], np.float32) and out["b"][6].shape == (0, 3)
    assert grading.decode(grading.encode(jnp.float32(3.0))).shape == ()


def test_the_wire_format_rejects_what_it_cannot_check():
    with pytest.raises(TypeError, match="cannot be sent"):
        grading.encode(object())
    with pytest.raises(TypeError, match="cannot be sent"):
        grading.encode(np.array([object()]))
    good = grading.encode(np.arange(3.0))
    for bad in ({**good, "dtype": "|O"}, {**good, "shape": [4]}, {**good, "shape": [-3]},
                {**good, "b64": "@@"}, {"t": "pickle", "v": "gASVAAAAAAAAAAA="},
                {**good, "extra": 1}):
        with pytest.raises(ValueError):
            grading.decode(bad)
    record = grading.decode({"t": "record", "name": "SFTBatch", "tuple": True,
                             "fields": ["tokens", "loss_mask"], "v": [[1], [0]]})
    assert record.tokens == [1] and tuple(record) == ([1], [0])
    with pytest.raises(ValueError):
        grading.decode({"t": "record", "name": "X", "tuple": True, "fields": ["__class__"],
                        "v": [1]})


def test_checks_use_the_graded_function_only_through_calls_and_probes():
    """Under ``rlhf-book grade`` the function lives in another process: a check that wraps it
    in ``jax.jit``/``jax.grad``/``jax.vmap`` or a lambda itself would trace a stand-in."""
    import ast
    import importlib
    import inspect

    from rlhf_book.textbook.checks import PROBES

    for chapter in catalog.CHAPTERS:
        module = importlib.import_module(f"rlhf_book.textbook.checks.{chapter.key}")
        probes = set(PROBES.values())
        tree = ast.parse(inspect.getsource(module))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or getattr(module, node.name) in probes:
                continue
            if "fn" not in {a.arg for a in node.args.args + node.args.kwonlyargs}:
                continue  # an oracle's helper: it never sees the graded function
            for sub in ast.walk(node):
                if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                        and sub.value.id == "jax" and sub.attr in ("jit", "grad", "vmap")):
                    pytest.fail(f"{chapter.key}.{node.name} calls jax.{sub.attr}: use a probe")
                if isinstance(sub, ast.Lambda) and any(
                        isinstance(n, ast.Name) and n.id == "fn" for n in ast.walk(sub.body)):
                    pytest.fail(f"{chapter.key}.{node.name} wraps fn in a lambda: use a probe")
