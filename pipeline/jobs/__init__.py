"""What each DVC stage does, one module per stage; ``stages/`` only parses arguments.

Every job validates params first, writes its outputs atomically at the very end, and logs to
MLflow as a side channel (see :mod:`pipeline.tracking`). Nothing is imported here: a stage's
process loads its own job module and what that needs, so dvc.yaml lists, as each stage's deps,
exactly the code it runs (:mod:`pipeline.provenance`; tests/test_code_deps.py).
"""
