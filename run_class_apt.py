"""The reference's entry point, kept so its launch scripts run unchanged.

    python -m torch.distributed.launch --nproc_per_node=8 run_class_apt.py --model ...
    torchrun --nproc_per_node=8 run_class_apt.py ...

Every flag of the reference is accepted (``python run_class_apt.py --help``); this is
``aptune train`` under another name.
"""

import sys

from aptune.cli import reference_main

if __name__ == "__main__":
    sys.exit(reference_main())
