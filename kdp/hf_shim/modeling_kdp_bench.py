"""Custom-code entry point saved beside kdp-bench models whose architecture changed (needs kdp-bench installed).

transformers loads ``KdpBench<stock class>`` from here (``config.auto_map``); `kdp.hf_custom` defines one per
supported family.
"""

from kdp.hf_custom import *  # noqa: F401,F403
