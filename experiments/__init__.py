"""The experiment scripts: ``python -m experiments.NAME --help`` from the repository root.

Each script reproduces one study (its docstring says which, with its command);
``experiments/common.py`` gives them one set of flags and records where every
results file came from; ``experiments/results/README.md`` indexes the committed
results.
"""
