"""Format tags written into the files the stages exchange, so a reader can refuse a foreign file.

A file whose ``format`` field is not the one expected here was written by another program or
another version of this one; readers say so instead of misreading it.
"""

from __future__ import annotations

MODEL_FORMAT = "thanos-bench/encoder/v1"   # train stage -> embed stage: a frozen encoder
RESUME_FORMAT = "thanos-bench/resume/v1"   # a train stage's resume checkpoint (not a DVC output)
