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
    """Replace list items named by stage name or task with their index. Every step before the last must
    exist: --set changes the runs' fields, it does not add a stage (a pretrain stage the runs lack, a task
    item) with defaults for what the command line does not say."""
    node, out = data, []
    keys = path.split(".")
    for i, key in enumerate(keys):
        where = ".".join(out) or "the config"
        if isinstance(node, list):
            names = [item.get("name") or item.get("task") if isinstance(item, dict) else None for item in node]
            items = f"items: {', '.join(map(str, names)) or 'none'}"
            if not key.isdigit() and key not in names:
                raise ValueError(f"--set {text!r}: {key!r} names no item of {where} ({items}; or use an index); "
                                 f"--set does not add an item: set the whole list, e.g. --set '{where}=[...]', or "
                                 f"add it in the grid")
            if key.isdigit() and int(key) >= len(node):
                raise ValueError(f"--set {text!r}: {where} has {len(node)} item(s) ({items}), no index {key}; "
                                 f"--set does not add an item: set the whole list, e.g. --set '{where}=[...]', or "
                                 f"add it in the grid")
            key = str(names.index(key)) if not key.isdigit() else key
        out.append(key)
        if i == len(keys) - 1:
            break
        field = ".".join(out)
        if isinstance(node, dict) and key in node and node[key] is None:
            # an absent key is left to the validation (an unknown field, or a new option of a free mapping)
            if field == "pretrain":
                raise ValueError(f"--set {text!r}: the runs have no pretrain stage, so there is no {path} to set; "
                                 f"to add one, set the whole stage, e.g. --set 'pretrain={{task: mlm, steps: 200}}', "
                                 f"or add it in the grid")
            raise ValueError(f"--set {text!r}: {field} is null in the runs, so there is no {path} to set; set it "
                             f"whole, e.g. --set '{field}=...'")
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list):
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
