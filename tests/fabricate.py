"""The fabricated dataset copies of :mod:`pipeline.data.fabricate`, under the name the tests import."""

from pipeline.data.fabricate import *  # noqa: F401,F403
from pipeline.data.fabricate import __all__  # noqa: F401
