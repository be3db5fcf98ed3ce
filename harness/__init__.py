"""harness: declare pretraining ablations as data, run every arm through one trainer and one evaluator."""

__version__ = "0.1.0"
