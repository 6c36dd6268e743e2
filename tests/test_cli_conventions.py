"""The `zoo` command behaves like a Unix tool: exit codes, pipes, --version, --json, --help."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import zoo
from zoo._registry import get_spec, iter_specs
from zoo.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def _zoo(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-m", "zoo", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, **kw
    )


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    # The read end is closed before the command writes: its first write meets a broken pipe.
    p = _zoo("list", "--json", stdout=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err


def test_zoo_list_piped_to_head_prints_one_line_and_no_error():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run(
        f"{sys.executable} -m zoo list --json | head -c 10; {sys.executable} -m zoo list | head -1",
        shell=True,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.stderr == ""
    first, second = r.stdout[:10], r.stdout[10:]
    assert first == "[\n  {\n    " and second.split() == [
        "name",
        "family",
        "params",
        "tags",
        "(*default)",
        "weights",
        "aliases",
    ]


def test_version_and_python_dash_m_zoo():
    p = _zoo("--version", stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and out.decode().strip() == f"medzoo {zoo.__version__}"
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert zoo.__version__ == meta["version"]


def test_usage_errors_exit_2_and_runtime_failures_exit_1(tmp_path, capsys, hub_env):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["convert", "x.pt"])  # --model and -o missing
    assert e.value.code == 2
    assert main(["info", "qtunet-q"]) == 2  # an unknown name is a usage error
    assert "Did you mean" in capsys.readouterr().err
    assert main(["info", "qtunet-t.no-such-tag"]) == 2
    # A file that is not a checkpoint cannot work as given: 2, and nothing is written.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", str(bad), "--model", "qtunet-t", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert not list(tmp_path.glob("o.safetensors*"))
    # Runtime failures: nothing matches, a missing file, a server that answers 404.
    assert main(["list", "nothing-like-this*"]) == 1
    missing = tmp_path / "missing.pt"
    assert main(["convert", str(missing), "--model", "qtunet-t", "-o", str(tmp_path / "o.safetensors")]) == 1
    assert main(["download", "qtunet-t.ct-ssl", "-q"]) == 1  # the loopback server has no such file
    assert "error" in capsys.readouterr().err


def test_convert_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    rc = main(["convert", str(tmp_path), "--model", "qtunet-t", "-o", str(tmp_path / "o.safetensors")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "ckpt.safetensors"
    src.write_bytes(b"x" * 16)
    assert main(["convert", str(src), "--model", "qtunet-t", "-o", str(src)]) == 2
    assert "input checkpoint itself" in capsys.readouterr().err
    assert src.read_bytes() == b"x" * 16


def test_list_json_has_numbers_and_nulls(capsys):
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(zoo.list_models())
    qt = rows["qtunet-t"]
    assert qt["num_params"] == get_spec("qtunet-t").meta["num_params"] and isinstance(qt["gmacs"], float)
    assert qt["default_tag"] == "ct-ssl" and "ct-ssl" in qt["tags"] and qt["weights_available"] is True
    assert qt["input_size"] == [1, 96, 96, 96]
    vt = rows["vtunet-t"]
    assert vt["default_tag"] is None and vt["tags"] == [] and vt["weights_available"] is False
    assert rows["pctnet"]["aliases"] == ["pctnet-vf10k", "pctnet-vf110k"]


def test_info_json_keeps_missing_values_null(capsys):
    assert main(["info", "vtunet-t", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default_tag"] is None and info["weights"] == [] and info["tag"] is None
    assert isinstance(info["meta"]["num_params"], int)


def test_bench_json_writes_null_for_what_was_not_measured(capsys):
    rc = main(["bench", "logonet", "--no-cpu", "--no-onnx", "--no-cuda", "--json", "-q"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["cpu_ms"] is None and row["ort_ms"] is None
    assert row["params"] == get_spec("logonet").meta["num_params"] and isinstance(row["gmacs"], float)


def test_every_argument_of_every_command_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, sp in sub.choices.items()
        for a in sp._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert not missing, missing
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert all(helps.get(name) for name in sub.choices), helps


def test_card_outside_the_source_checkout_needs_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["card"]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert not (tmp_path / "model_cards").exists()
    assert main(["card", "--out", str(tmp_path / "cards")]) == 0
    assert (tmp_path / "cards" / "qtunet-t.md").is_file()


def test_cache_honours_xdg_cache_home(tmp_path, monkeypatch):
    from zoo.hub import cache_dir

    monkeypatch.delenv("MEDZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "medzoo"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per XDG: ignored
    assert cache_dir() == Path.home() / ".cache" / "medzoo"
    monkeypatch.setenv("MEDZOO_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_the_test_run_never_uses_the_real_caches():
    from zoo.hub import cache_dir

    real = Path.home() / ".cache"
    for var in ("MEDZOO_CACHE", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):
        assert not Path(os.environ[var]).is_relative_to(real), var
    assert not cache_dir().is_relative_to(real)


def test_hubconf_declares_every_core_dependency_and_whole_docstrings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {
        d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().replace("-", "_") for d in core
    }
    assert set(hubconf.dependencies) == names
    for s in iter_specs():
        doc = getattr(hubconf, s.hub_entrypoint).__doc__
        assert s.description.strip() in doc, s.name
    # A description with "et al." must not be cut there.
    assert any("et al." in s.description for s in iter_specs())


@pytest.mark.slow  # two demo runs: ~45 s on a loaded 2-core machine
def test_demo_with_random_weights_gives_the_same_labels_each_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nilearn")
    counts = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # whatever the global RNG holds, the demo's model is the same
        assert main(["demo", "qtunet-t", "--spacing", "8", "-o", str(tmp_path / f"seg{i}.nii.gz")]) == 0
        out = capsys.readouterr().out
        counts.append(next(line for line in out.splitlines() if line.startswith("voxels per predicted")))
    assert counts[0] == counts[1]


# Commands whose output is not a result to parse: a shell script, the cards' paths, the demo's tour.
_NOT_REPORTING = {"completion", "card", "demo"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return dict(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_every_reporting_command_takes_json():
    subs = _subparsers()
    assert {"list", "info", "download", "convert", "publish", "predict", "export", "bench", "finetune",
            "pretrain"} <= set(subs) - _NOT_REPORTING  # fmt: skip
    without = [
        n for n, sp in subs.items() if n not in _NOT_REPORTING and "--json" not in sp._option_string_actions
    ]
    assert without == []


@pytest.mark.parametrize("flag,dest", [("-v", "verbose"), ("--verbose", "verbose"), ("-q", "quiet")])
def test_verbose_and_quiet_are_taken_before_or_after_the_command(flag, dest):
    parser = build_parser()
    for name, sp in _subparsers().items():
        required = [a for a in sp._actions if a.required or (not a.option_strings and a.nargs is None)]
        rest = ["x"] * len([a for a in required if not a.option_strings])
        rest += [s for a in required if a.option_strings for s in (a.option_strings[0], "x")]
        if name == "completion":
            rest = ["bash"]
        before, after, neither = ([flag, name, *rest], [name, *rest, flag], [name, *rest])
        assert getattr(parser.parse_args(before), dest) is True, before
        assert getattr(parser.parse_args(after), dest) is True, after
        assert getattr(parser.parse_args(neither), dest) is False, neither


def test_version_imports_no_torch():
    code = (
        "import sys\nfrom zoo.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'monai' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.stdout.split() == [
        f"medzoo {zoo.__version__}".split()[0],
        zoo.__version__,
        "0",
        "False",
        "False",
    ]


@pytest.mark.parametrize(
    "words,expected",
    [
        ("zoo fin", {"finetune"}),
        ("zoo -v fin", {"finetune"}),
        ("zoo finetune --grad", {"--grad-checkpointing"}),
        ("zoo finetune qtunet-t --logger ", {"tensorboard", "mlflow"}),
        ("zoo export m --exporter torch", {"torchscript"}),
        ("zoo completion ", {"bash", "zsh"}),
        ("zoo list --js", {"--json"}),
    ],
)
def test_bash_completion_from_the_parser_completes_commands_options_and_choices(words, expected, capsys):
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    empty = '""' if words.endswith(" ") else ""
    test = f"{script}\nCOMP_WORDS=({words}{empty}); COMP_CWORD={cword}\n_zoo_complete\n"
    test += 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    r = subprocess.run(["bash", "-c", test], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == expected
    assert main(["completion", "zsh"]) == 0
    assert "bashcompinit" in capsys.readouterr().out
