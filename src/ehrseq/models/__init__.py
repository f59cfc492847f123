"""Models: BEHRT, Med2Vec (classic baselines in `baselines`)."""

from ehrseq.models.behrt import BEHRT, BEHRTConfig, BEHRTForMLM, count_parameters
from ehrseq.models.med2vec import Med2Vec, Med2VecConfig

__all__ = ["BEHRT", "BEHRTConfig", "BEHRTForMLM", "Med2Vec", "Med2VecConfig", "count_parameters"]
