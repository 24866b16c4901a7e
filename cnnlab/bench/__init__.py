"""Measurements above the features: one timer (`timing`) and the benches built on it: convolution
algorithms (`conv`), the stacking study (`stacking`), data paths (`data`) and augmentation
throughput (`augment`)."""
