"""cnnlab: ConvNets in practice, as a command-line experiment runner."""
__version__ = "0.1.0"
