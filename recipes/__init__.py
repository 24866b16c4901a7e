"""The recipes shipped inside the package (installed as cnnlab.recipes; see cnnlab/shipped.py)."""
