"""Packed datasets: one contiguous, memory-mapped file of fixed-size uint8 images (or shards of it)."""
from cnnlab.pack.format import Pack, PackedSplit, SplitData, checksums, files_of, open_pack, read_header, verify, write

__all__ = ["Pack", "PackedSplit", "SplitData", "checksums", "files_of", "open_pack", "read_header", "verify", "write"]
