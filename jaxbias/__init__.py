"""jaxbias: find and remove the shortcuts deep classifiers learn from biased data.

Pure-functional JAX re-implementations of RR-ClArC and the ClArC family, EnD,
FMD, region attribution with targeted noise, and the RRR baseline.
"""

__version__ = "0.1.0"
