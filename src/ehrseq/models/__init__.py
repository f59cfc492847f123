"""Models: BEHRT (and, later, Med2Vec and classic baselines)."""

from ehrseq.models.behrt import BEHRT, BEHRTConfig, BEHRTForMLM, count_parameters

__all__ = ["BEHRT", "BEHRTConfig", "BEHRTForMLM", "count_parameters"]
