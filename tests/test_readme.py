"""README.md stays true: every ```python block runs, in order, and the commands it names exist."""
import pathlib
import re
import subprocess
import sys

import pytest

import mixers

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_block_runs(index):
    code = _blocks("python")[index]
    before = set(mixers.names())
    ns = {"__name__": f"readme_block_{index}"}
    try:
        exec(compile(code, f"README.md python block {index}", "exec"), ns)
    finally:  # blocks may register example mixers; leave the registry as found
        for name in set(mixers.names()) - before:
            mixers.unregister_mixer(name)


def test_quickstart_subcommands_have_help():
    commands = {ln.split()[1] for block in _blocks("bash") for ln in block.splitlines()
                if ln.startswith("mixerzoo ")}
    assert {"list", "check", "ablate"} <= commands
    for sub in sorted(commands):
        r = subprocess.run([sys.executable, "-m", "ablations.cli", sub, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (sub, r.stderr)
