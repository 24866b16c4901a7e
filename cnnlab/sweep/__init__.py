"""Sweeps: a recipe's cells (named variants and grids of any recipe key, crossed) trained once per
seed, and the one summary every sweep prints: mean +- sd over seeds, differences from the baseline
paired by seed with their interval, images/s and wall time."""
from cnnlab.sweep.grid import Cell, Trial, cells, parse_grid, trials
from cnnlab.sweep.stats import mean_sd, paired, summarise

__all__ = ["Cell", "Trial", "cells", "mean_sd", "paired", "parse_grid", "summarise", "trials"]
