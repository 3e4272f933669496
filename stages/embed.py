"""DVC stage `embed`: see :func:`pipeline.jobs.embed.embed_job`."""

import sys

from pipeline.cli import stage_main
from pipeline.jobs.embed import embed_job

if __name__ == "__main__":
    sys.exit(stage_main(embed_job.__doc__ or "embed", embed_job))
