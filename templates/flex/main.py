"""Flex Template launcher: runs pipelines.convert with the parameters the template passes.

The image sets FLEX_TEMPLATE_PYTHON_PY_FILE to this file. Each pipeline gets its own template
folder (templates/<name>/) with a copy of this launcher calling its own pipelines.<name>.run.
"""

import logging
import sys

from pipelines import convert

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    convert.run(sys.argv[1:], wait=False)  # a launcher submits the job and returns
