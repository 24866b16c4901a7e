"""Profiling a training step (`cnnlab profile`): memory per layer, the predicted and the measured
peak, the largest batch that fits a budget (`memory`); the verdict on what limits a step, read from
its measured phases (`verdict`)."""
from cnnlab.profile.memory import (LayerRow, MemoryReport, Saved, batch_scaling, checkpoint_saving, largest_batch,
                                   measure_peak_cpu, measure_peak_cuda, parse_bytes, per_layer, predict_peak,
                                   storage_bytes, train_step)

__all__ = ["LayerRow", "MemoryReport", "Saved", "batch_scaling", "checkpoint_saving", "largest_batch", "measure_peak_cpu",
           "measure_peak_cuda", "parse_bytes", "per_layer", "predict_peak", "storage_bytes", "train_step"]
