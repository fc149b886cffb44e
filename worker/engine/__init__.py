"""The pruning engine: models, data, training, masks and the iterative-magnitude-pruning driver.

Plain PyTorch, usable from a Python shell or the ``lth run`` CLI; it imports neither FastAPI nor
Celery.
"""
