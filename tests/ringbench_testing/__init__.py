"""RingBench's test helpers, importable as `ringbench_testing` (pytest puts tests/ on sys.path, see pyproject).

Not `tests.*`: an editable Detectron2 install puts its checkout on sys.path, and its regular `tests` package
would shadow this repository's `tests` folder, a namespace package.
"""
