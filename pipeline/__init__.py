"""lungscreen pipeline: the screening job that streams CT cohorts through Triton.

Research software trained on synthetic data; not a medical device.
"""

__version__ = "0.1.0"
