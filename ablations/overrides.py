"""``mixerzoo ablate ... --set key.path=value``: command-line overrides of a grid's resolved run configs,
validated exactly as the YAML fields are (so a typo or a bad value stops the grid before any run).

``key.path`` is a dotted path into the run config (``model.d_model``, ``pretrain.steps``,
``pretrain.options.corpus``, ``tasks.0.optim.lr``); a list item may also be named by its stage name or
task (``tasks.sentiment.steps``). ``value`` is parsed as YAML (``3e-4``, ``true``, ``[0, 1]``,
``{lr: 1.0e-3}``, a plain word stays a string). Overrides apply after the scale overlay and the grid's
axes, in the order given; the run id hashes the resulting config, so overridden runs never mix with
the grid's own."""
from __future__ import annotations

import copy
import re

from .config import config_to_dict, run_config_from_dict
from .grid import RunSpec, run_id, set_path, validate_run

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set(text: str) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``; ValueError naming the argument otherwise."""
    import yaml
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path or any(not part for part in path.split(".")):
        raise ValueError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set model.d_model=64")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string; a number is meant
            value = float(value) if _FLOAT.fullmatch(value.strip()) else value
        except ValueError:
            pass
    return path, value


def _resolve_names(data: dict, path: str, text: str) -> str:
    """Replace list items named by stage name or task with their index."""
    node, out = data, []
    for key in path.split("."):
        if isinstance(node, list) and not key.isdigit():
            names = [item.get("name") or item.get("task") if isinstance(item, dict) else None for item in node]
            if key not in names:
                raise ValueError(f"--set {text!r}: {key!r} names no item of {'.'.join(out) or 'the config'} "
                                 f"(items: {', '.join(map(str, names))}; or use an index)")
            key = str(names.index(key))
        out.append(key)
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and int(key) < len(node):
            node = node[int(key)]
        else:
            node = None
    return ".".join(out)


def apply_overrides(specs: list[RunSpec], sets: list[str], validate: bool = True) -> list[RunSpec]:
    """``specs`` with every ``--set`` applied to each run config, re-validated, with new run ids."""
    if not sets:
        return specs
    parsed = [(text, *parse_set(text)) for text in sets]
    out = []
    for spec in specs:
        data = config_to_dict(spec.config)
        for text, path, value in parsed:
            if path.split(".")[0] in ("seed", "labels"):
                raise ValueError(f"--set {text!r}: {path.split('.')[0]} cannot be set here; use --seeds")
            set_path(data, _resolve_names(data, path, text), value, where=f"--set {text!r}: ")
        try:
            cfg = run_config_from_dict(copy.deepcopy(data))
            if validate:
                validate_run(cfg, "")
        except (ValueError, KeyError) as e:
            raise ValueError(f"--set {', '.join(sets)}: {e.args[0] if isinstance(e, KeyError) else e}") from None
        out.append(RunSpec(run_id=run_id(cfg), config=cfg, point=dict(spec.point)))
    return out
