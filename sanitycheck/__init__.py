"""sanitycheck: does a saliency or attention explanation depend on the model it claims to explain?"""

__version__ = "0.1.0"
