"""Tasks: synthetic recall (MQAR and variants), masked language modelling on text, an offline
docstring-classification downstream task, and GLUE. ``build(name, **options)`` constructs one."""
from .base import IGNORE_INDEX, Task, get_task, register_task, task_names  # noqa: F401


def build(name: str, **options) -> Task:
    """Construct the task registered as ``name`` with its keyword options (ValueError on bad options)."""
    _load_builtin()
    cls = get_task(name)
    return cls(**options)


def names() -> list[str]:
    _load_builtin()
    return task_names()


def _load_builtin():
    import importlib
    for mod in ("synthetic", "text", "glue"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet must not hide the others
            if e.name != f"{__name__}.{mod}":
                raise
