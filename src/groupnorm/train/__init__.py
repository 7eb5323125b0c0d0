"""ONE run engine for every experiment: config base, lifecycle, task plug-ins, virtual devices, torchrun.

from groupnorm.train import TrainConfig, train_run
result = train_run(TrainConfig(norm="gn:8", images_per_device=2), "runs")        # classification
result = train_run(VideoConfig(norm="gn:8", frames=8), "runs")                     # video clips
result = train_run(DetectionConfig(backbone_norm="gn:8", init="..."), "runs")      # Mask R-CNN
"""

from groupnorm.train.classification import ClassificationTask, evaluate
from groupnorm.train.config import RunConfig, TrainConfig, config_from, run_id, scaled_lr
from groupnorm.train.detection import DetectionTask
from groupnorm.train.detection_config import DetectionConfig
from groupnorm.train.engine import TASKS, check_configs, run_cost, run_dir_of, task_of, train_run
from groupnorm.train.records import CorruptRecord, Record, RunBusy, load_records, read_metrics
from groupnorm.train.schedule import learning_rate, lr_at
from groupnorm.train.task import Task
from groupnorm.train.video import VideoConfig, VideoTask

__all__ = [
    "TASKS",
    "ClassificationTask",
    "CorruptRecord",
    "DetectionConfig",
    "DetectionTask",
    "Record",
    "RunBusy",
    "RunConfig",
    "Task",
    "TrainConfig",
    "VideoConfig",
    "VideoTask",
    "check_configs",
    "config_from",
    "evaluate",
    "learning_rate",
    "load_records",
    "lr_at",
    "read_metrics",
    "run_cost",
    "run_dir_of",
    "run_id",
    "scaled_lr",
    "task_of",
    "train_run",
]
