"""The README's commands as written: every `max-whisper` line parses with the command line's own
parser, the files it names exist, and the extras and make targets it names are real."""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest

from support import REPO_ROOT, SHARED_AUDIO

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def shell_lines() -> list[str]:
    """The command lines of the README's sh blocks, comments dropped."""
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


MAX_WHISPER_LINES = [line for line in shell_lines() if line.startswith("max-whisper ")]


def test_readme_has_commands():
    assert len(MAX_WHISPER_LINES) >= 10 and any(x.startswith("make ") for x in shell_lines())


@pytest.mark.parametrize("line", MAX_WHISPER_LINES)
def test_command_parses_and_its_files_exist(line):
    from max_whisper.cli import build_parser

    words = shlex.split(line)[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(f"`{line}` does not parse (exit {exc.code})")
    for word in words:
        if word.startswith("../shared/") and not SHARED_AUDIO.is_dir():
            continue  # the tests that need the shared clips skip without them; this one too
        if word.startswith(("samples/", "../shared/")):
            assert (REPO_ROOT / word).exists(), f"`{line}`: {word} does not exist"


def test_make_lines_name_real_targets_and_files():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+)\s*:", makefile, flags=re.M))
    targets |= {"bench-stages", "bench-compile", "bench-memory"}  # a pattern rule's targets
    for line in shell_lines():
        if not line.startswith("make"):
            continue
        words = shlex.split(line)[1:]
        for word in words:
            if "=" not in word:
                assert word in targets, f"`{line}`: no target {word}"
            elif word.startswith("AUDIO=") and SHARED_AUDIO.is_dir():
                assert (REPO_ROOT / word.removeprefix("AUDIO=")).exists(), line


def test_python_example_compiles_and_its_files_exist():
    [example] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    compile(example, "README.md", "exec")
    for name in re.findall(r'"((?:samples|\.\./shared)/[^"]+)"', example):
        if name.startswith("../shared/") and not SHARED_AUDIO.is_dir():
            continue
        assert (REPO_ROOT / name).exists(), name


def test_extras_named_exist():
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    named = set()
    for group in re.findall(r"'\.\[([\w,]+)\]'", README):
        named |= set(group.split(","))
    assert {"base", "reference", "serve", "bench", "vad"} <= named
    assert named <= set(extras), f"unknown extras: {named - set(extras)}"
