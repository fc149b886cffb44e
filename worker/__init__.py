"""Workers: the pruning engine (``worker.engine``, plain PyTorch) and the Celery tasks around it."""
