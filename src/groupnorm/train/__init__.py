"""One training loop for 1 or N processes: virtual devices, lr scaling, checkpoints and resume."""

from groupnorm.train.config import TrainConfig, run_id, scaled_lr
from groupnorm.train.loop import RunBusy, evaluate, run_dir_of, summarize, train_run
from groupnorm.train.records import Record, load_records, read_metrics
from groupnorm.train.schedule import learning_rate

__all__ = [
    "Record",
    "RunBusy",
    "TrainConfig",
    "evaluate",
    "learning_rate",
    "load_records",
    "read_metrics",
    "run_dir_of",
    "run_id",
    "scaled_lr",
    "summarize",
    "train_run",
]
