"""cerberus: the best small ResNet for CIFAR-10 under a hard parameter budget, found by Optuna.

Data flow, one concern per module: cli -> launch (a run's set-up) -> study (its definition) ->
space (a trial's Config, declared in config and knobs) -> (model, data) -> search (the trial
loop, kept whole by liveness) -> fit (one configuration trained, with optim's optimizers) ->
storage. ``train`` retrains a winner; ``tables``, ``report`` and ``export`` read a study.
"""

__version__ = "0.3.0"
