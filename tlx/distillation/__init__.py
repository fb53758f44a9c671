"""Knowledge distillation: a frozen teacher's knowledge moved into a student.

Response-based (:class:`KD`), feature-based (:class:`Hint`, :class:`Attention`) and relation-based
(:class:`RKD`, :class:`SP`) losses, one per file, combined in :class:`DistillationClassifier`.
"""

from tlx.distillation.attention import Attention
from tlx.distillation.base import DistillationLoss, Outputs
from tlx.distillation.hint import Hint
from tlx.distillation.kd import KD
from tlx.distillation.model import DistillationClassifier, student_checkpoint
from tlx.distillation.rkd import RKD
from tlx.distillation.sp import SP
from tlx.distillation.teacher import Teacher

__all__ = ["KD", "RKD", "SP", "Attention", "DistillationClassifier", "DistillationLoss", "Hint", "Outputs",
           "Teacher", "student_checkpoint"]
