"""The ablation framework: grids, tasks, trainer, runner, reports and the ``mixerzoo`` CLI.

``ablations.load_run(run_dir, stage=None)`` returns a finished run's trained model and its tokenizer."""


def load_run(run_dir, stage=None, map_location="cpu"):
    """``(model, tokenizer)`` of a finished run; see :func:`ablations.export.load_run`."""
    from .export import load_run as _load_run
    return _load_run(run_dir, stage, map_location=map_location)
