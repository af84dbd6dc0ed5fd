"""cerberus: the best small ResNet for CIFAR-10 under a hard parameter budget, found by Optuna.

Data flow, one module each: cli -> study -> space -> (model, data) -> train -> storage.
"""

__version__ = "0.2.0"
