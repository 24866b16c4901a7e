from cnnlab.data.module import ImageDataModule
from cnnlab.data.sources import SOURCES, Split

__all__ = ["ImageDataModule", "SOURCES", "Split"]
