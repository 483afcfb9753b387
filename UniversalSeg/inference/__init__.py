"""Inference: the predictor (any image in, masks on the exact input grid out) and the writers."""
from .predictor import InferenceMemoryError, Prediction, Predictor, PredictOptions
from .writers import write_labelmap, write_probabilities, write_seg_nrrd

__all__ = ["InferenceMemoryError", "Prediction", "PredictOptions", "Predictor", "write_labelmap",
           "write_probabilities", "write_seg_nrrd"]
